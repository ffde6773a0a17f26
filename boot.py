"""Runs first at every start of a board: Wi-Fi from wifi.json ({"ssid": ..., "password": ...})
when the port has a network module (the unix port has none: skipped there), then the clock from
NTP when it is below the sane floor (an ESP32 starts at 2000-01-01 after power-on), using the
time_servers of config.json (default: three pool.ntp.org servers, so that no single server can
make a critical step alone). main.py runs next; its SecureContext syncs again if this failed."""
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


def sync_clock(path="config.json"):
    # Imported here so a board without config.json still boots to the REPL.
    import tlsguard
    from tlsguard import clock
    if clock.now_us() // 1000000 >= tlsguard.clock_floor():
        print("boot: clock %s" % tlsguard.platform.date(clock.now_us() // 1000000))
        return
    from tlsguard import timesync
    try:
        with open(path) as f:
            servers = json.load(f).get("time_servers")
    except (OSError, ValueError):
        servers = None
    servers = servers or timesync.DEFAULT_SERVERS
    try:
        offset = tlsguard.sync_time(servers=servers)
        print("boot: clock set from NTP (stepped %d s), now %s"
              % (offset, tlsguard.platform.date(clock.now_us() // 1000000)))
    except tlsguard.TLSError as e:
        print("boot: %s" % e)


if network is not None:
    connect_wifi()
sync_clock()
