"""dns-01 hook for the tests, as a user would write one: `acme_hook.py URL [--wrong] set|clear
dns-01 NAME VALUE` puts the TXT record into pebble-challtestsrv's DNS (its management API at URL).
--wrong publishes a different value, as a misconfigured hook would."""
import json
import sys
import urllib.request


def main(argv):
    url, argv = argv[0], argv[1:]
    wrong = argv[0] == "--wrong"
    if wrong:
        argv = argv[1:]
    action, typ, name, value = argv
    assert typ == "dns-01", typ
    body = {"host": name.rstrip(".") + "."}
    if action == "set":
        body["value"] = "not-" + value if wrong else value
    req = urllib.request.Request("%s/%s-txt" % (url, action), data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()


if __name__ == "__main__":
    main(sys.argv[1:])
