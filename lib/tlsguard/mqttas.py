"""Verified TLS for Peter Hinch's mqtt_as, unmodified. mqtt_as (0.8) takes `ssl=True` and passes
`ssl_params` to the module-level `ssl.wrap_socket(sock, **ssl_params)`; an object given as
`ssl=` is only tested for truth, so `ssl=context` connects UNVERIFIED. use(config, context)
sets ssl=True and ssl_params naming the context, and routes ssl.wrap_socket calls that carry a
context to it (calls without one are passed to the original function unchanged)."""
import ssl

_plain = ssl.wrap_socket


def _wrap_socket(sock, context=None, server_hostname=None, do_handshake=True, **kw):
    if context is None:
        return _plain(sock, server_hostname=server_hostname, do_handshake=do_handshake, **kw)
    if kw:
        # cert=, key=, cadata=...: the context holds the credentials; never ignore one silently.
        raise ValueError("ssl_params with context= take only server_hostname, not %s" % ", ".join(kw))
    return context.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=do_handshake)


def install():
    """Make ssl.wrap_socket accept context= (idempotent)."""
    ssl.wrap_socket = _wrap_socket


def use(config, context=None, server_hostname=None):
    """Configure mqtt_as's `config` dict for verified TLS with `context` (a SecureContext; by
    default the one wrongly given as config["ssl"]). The certificate is checked against
    server_hostname, by default config["server"]."""
    if context is None:
        context = config.get("ssl")
        if not hasattr(context, "wrap_socket"):
            raise ValueError("mqttas.use: give the SecureContext (config['ssl'] is not one)")
    host = server_hostname or config.get("server")
    if not host:
        raise ValueError("mqttas.use: set config['server'] first (or give server_hostname)")
    install()
    config["ssl"] = True
    config["ssl_params"] = {"context": context, "server_hostname": host}
    return config
