"""Runs first at every start of a board: brings up Wi-Fi from wifi.json when the port has a
network module (the unix port has none, so this is skipped there)."""
import json
import time

try:
    import network
except ImportError:
    network = None


def connect_wifi(path="wifi.json", timeout_s=20):
    try:
        with open(path) as f:
            cfg = json.load(f)
    except OSError:
        print("boot: no %s, Wi-Fi not configured" % path)
        return None
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    if not wlan.isconnected():
        wlan.connect(cfg["ssid"], cfg["password"])
        deadline = time.ticks_add(time.ticks_ms(), timeout_s * 1000)
        while not wlan.isconnected() and time.ticks_diff(deadline, time.ticks_ms()) > 0:
            time.sleep_ms(200)
    print("boot: Wi-Fi", "up %s" % wlan.ifconfig()[0] if wlan.isconnected() else "FAILED")
    return wlan


if network is not None:
    connect_wifi()
