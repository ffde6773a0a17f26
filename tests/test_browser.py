"""A real browser on the device's page: headless Chromium (Debian's package) with the fleet root in
an NSS database of the test's own HOME loads the status page served by the example firmware under
the MicroPython unix port; the test reads the DOM and looks at the screenshot. Without the root the
browser refuses. After an operator sends new credentials, the browser's next connection gets the
new certificate (seen in Chromium's own net log). Marked `browser`: a Chromium start costs a few
seconds of the two cores, so these tests are few (4 browser runs); they run in `make test`."""
import json
import os
import shutil
import struct
import subprocess
import zlib

import pytest

from webboard import DEVICE, Fleet, WebBoard, curl

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not shutil.which("chromium") or not shutil.which("certutil"),
                                 reason="chromium and certutil come from tools/setup.sh")]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Browser:
    """Chromium with its own HOME (NSS database) and profile: never the user's."""

    def __init__(self, folder, root_pem=None):
        self.folder = str(folder)
        self.home = os.path.join(self.folder, "home")
        nssdb = "sql:" + os.path.join(self.home, ".pki", "nssdb")
        os.makedirs(os.path.join(self.home, ".pki", "nssdb"))
        subprocess.run(["certutil", "-d", nssdb, "-N", "--empty-password"], check=True, capture_output=True)
        if root_pem:
            subprocess.run(["certutil", "-A", "-d", nssdb, "-t", "C,,", "-n", "tlsguard fleet root", "-i", root_pem],
                           check=True, capture_output=True)
        self.runs = 0

    def load(self, url):
        """Loads url once; returns (DOM text or "", PNG bytes or None, certificates (PEM) the
        browser received, stderr)."""
        self.runs += 1
        run = os.path.join(self.folder, "run%d" % self.runs)
        os.makedirs(run)
        png, netlog = os.path.join(run, "page.png"), os.path.join(run, "net.json")
        cmd = ["chromium"] + FLAGS + ["--user-data-dir=" + os.path.join(run, "profile"), "--window-size=800,500",
                                      "--dump-dom", "--screenshot=" + png, "--log-net-log=" + netlog, url]
        r = subprocess.run(cmd, env=dict(os.environ, HOME=self.home), capture_output=True, text=True, timeout=180)
        shot = None
        if os.path.exists(png):
            with open(png, "rb") as f:
                shot = f.read()
        return r.stdout, shot, received_certificates(netlog), r.stderr


def received_certificates(netlog):
    """The chains Chromium received (SSL_CERTIFICATES_RECEIVED events), PEM, in order."""
    try:
        with open(netlog) as f:
            log = json.load(f)
    except (OSError, ValueError):
        return []
    wanted = log["constants"]["logEventTypes"]["SSL_CERTIFICATES_RECEIVED"]
    return [e["params"]["certificates"] for e in log["events"] if e["type"] == wanted and "params" in e]


def decode_png(data):
    """(width, height, rows of (r, g, b)) of an 8-bit RGB/RGBA non-interlaced PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", None
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and color in (2, 6) and not interlace
            bpp = 4 if color == 6 else 3
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = w * bpp
    rows, prev = [], bytearray(stride)
    for y in range(h):
        ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(w)])
        prev = line
    return w, h, rows


def dark(rows, x0, y0, x1, y1):
    """Fraction of dark (text) pixels in the box."""
    px = [p for row in rows[y0:y1] for p in row[x0:x1]]
    return sum(1 for p in px if sum(p) < 200) / len(px)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return Fleet(str(tmp_path_factory.mktemp("fleet")))


@pytest.fixture
def board(tmp_path, fleet):
    b = WebBoard(tmp_path / "board", fleet)
    yield b
    b.stop()


def serial_of_pem(pem):
    from cryptography import x509
    return x509.load_pem_x509_certificate(pem.encode()).serial_number


def test_browser_shows_the_page_and_refuses_without_the_root(tmp_path, board, fleet):
    url = "https://localhost:%d/" % board.port
    dom, shot, chains, err = Browser(tmp_path / "trusting", fleet.root_pem).load(url)
    leaf = fleet.leaf(1)
    assert "<h1>%s</h1>" % DEVICE in dom, err[-2000:]
    assert "CN=%s,O=tlsguard fleet" % DEVICE in dom and "%x" % leaf.serial_number in dom and "Uptime" in dom
    # The browser got the chain (device + issuing CA) from the device and built it to the root.
    assert [len(c) for c in chains] and all(len(c) == 2 for c in chains)
    assert serial_of_pem(chains[-1][0]) == leaf.serial_number
    # The screenshot is the page: white background, the heading's dark text top left, table rows
    # below it, nothing where the page has no content (bottom right).
    w, h, rows = decode_png(shot)
    assert (w, h) == (800, 500)
    assert rows[5][5] == (255, 255, 255)
    assert dark(rows, 30, 30, 200, 70) > 0.08  # <h1>sensor-1</h1>
    assert dark(rows, 30, 90, 120, 370) > 0.02  # the row labels
    assert dark(rows, 700, 420, 790, 490) == 0

    mark = len(board.lines)
    dom, shot, _, err = Browser(tmp_path / "stranger").load(url)
    assert shot is None and DEVICE not in dom
    assert "net::ERR_CERT_AUTHORITY_INVALID" in err
    # On the device, the refusal is named as one: the browser does not trust its certificate.
    line = board.wait_log(r"TLS handshake_failed: .*", after=mark).group(0)
    assert "after this device sent its certificate" in line and "Trust the fleet root in the client" in line


def test_browser_sees_the_new_certificate_after_a_hot_swap(tmp_path, board, fleet):
    browser = Browser(tmp_path / "b", fleet.root_pem)
    url = "https://localhost:%d/" % board.port
    _, _, chains, err = browser.load(url)
    assert chains and serial_of_pem(chains[-1][0]) == fleet.leaf(1).serial_number, err[-2000:]
    r = curl("--cacert", fleet.root_pem, "--cert", fleet.operator["cert"], "--key", fleet.operator["key"],
             "-H", "Content-Type: application/octet-stream", "--data-binary", "@" + fleet.packages[2],
             "https://localhost:%d/credentials" % board.operator_port)
    assert json.loads(r.stdout) == {"version": 2, "trial": True}, r.stdout + r.stderr
    dom, shot, chains, err = browser.load(url)
    new = fleet.leaf(2)
    assert chains and all(serial_of_pem(c[0]) == new.serial_number for c in chains), err[-2000:]
    assert "%x" % new.serial_number in dom and "version 2" in dom and shot is not None
    assert board.proc.poll() is None  # no restart
