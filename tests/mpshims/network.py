"""network.WLAN for the unix port (it has no network module): a station interface that is always
up, because the host's own network carries the traffic. Test plumbing for clients such as
mqtt_as that bring Wi-Fi up themselves; never installed on a board."""
STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010


class WLAN:
    def __init__(self, interface=STA_IF):
        self._active = False

    def active(self, flag=None):
        if flag is not None:
            self._active = bool(flag)
        return self._active

    def connect(self, ssid=None, key=None, **kw):
        self._active = True

    def disconnect(self):
        pass

    def isconnected(self):
        return True

    def status(self, *a):
        return STAT_GOT_IP

    def ifconfig(self, *a):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, *a, **kw):
        return None
