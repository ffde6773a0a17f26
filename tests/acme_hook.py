"""Challenge hook for the tests, as a user would write one: `acme_hook.py URL [MODE] set|clear dns-01
NAME VALUE` puts the TXT record into pebble-challtestsrv's DNS (its management API at URL);
`... set|clear http-01 DOMAIN PATH CONTENT` has challtestsrv serve the token.
MODE: --wrong publishes another value (a misconfigured hook); --servfail makes the CA's lookups of
NAME fail (a broken DNS); --servfail-once=FILE does so for the first order only (a DNS hiccup)."""
import json
import os
import sys
import urllib.request


def post(url, path, body):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST")
    urllib.request.urlopen(req, timeout=10).read()


def main(argv):
    url, argv = argv[0], argv[1:]
    mode = argv.pop(0) if argv[0].startswith("--") else ""
    action, typ = argv[:2]
    if typ == "http-01":
        token = argv[3].rsplit("/", 1)[1]
        if action == "set":
            post(url, "/add-http01", {"token": token, "content": argv[4]})
        else:
            post(url, "/del-http01", {"token": token})
        return
    name, value = argv[2:]
    host = name.rstrip(".") + "."
    if action == "clear":
        post(url, "/clear-txt", {"host": host})
        post(url, "/clear-servfail", {"host": host})
        return
    post(url, "/set-txt", {"host": host, "value": "not-" + value if mode == "--wrong" else value})
    if mode == "--servfail" or mode.startswith("--servfail-once="):
        flag = mode.partition("=")[2]
        if flag and os.path.exists(flag):
            return
        if flag:
            open(flag, "w").close()
        post(url, "/set-servfail", {"host": host})


if __name__ == "__main__":
    main(sys.argv[1:])
