#!/usr/bin/env python3
"""Writes the committed seed corpora in fuzz/corpus/{frame,client_frame,
handshake,utf8}/ from the byte vectors of the unit tests (RFC 6455 5.7,
length boundaries, every framing rule, UTF-8 classes, handshakes).

Run by hand from the repository root when vectors change; the build never
runs it. Seed layouts follow each harness's header comment."""
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(b0, payload=b"", mask=None, lenbytes=None):
    n = len(payload)
    mbit = 0x80 if mask is not None else 0
    if lenbytes is not None:
        hdr = bytes([b0]) + lenbytes
        hdr = bytes([hdr[0], hdr[1] | mbit]) + hdr[2:]
    elif n < 126:
        hdr = bytes([b0, mbit | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, mbit | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, mbit | 127]) + struct.pack(">Q", n)
    if mask is None:
        return hdr + payload
    body = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    return hdr + mask + body


def streams(masked):
    m = KEY if masked else None
    f = lambda b0, p=b"", **kw: frame(b0, p, m, **kw)
    s = {
        "hello": f(0x81, b"Hello"),
        "frag_hello": f(0x01, b"Hel") + f(0x80, b"lo"),
        "ping": f(0x89, b"Hello"),
        "pong": f(0x8A, b"Hello"),
        "bin256": f(0x82, bytes(range(256))),
        "bin64k": f(0x82, b"\xab" * 65536),
        "len0": f(0x81),
        "len125": f(0x82, b"x" * 125),
        "len126": f(0x82, b"x" * 126),
        "len65535": f(0x82, b"y" * 65535),
        "len_msb": f(0x82, lenbytes=b"\x7f\x80" + b"\0" * 7),
        "nonmin16": f(0x82, b"abc", lenbytes=b"\x7e\x00\x03"),
        "nonmin64": f(0x82, b"abc", lenbytes=b"\x7f" + struct.pack(">Q", 3)),
        "too_big": f(0x82, lenbytes=b"\x7f" + struct.pack(">Q", 1 << 20)),
        "ctrl_126": f(0x89, b"p" * 126),
        "ctrl_frag": f(0x09, b"p"),
        "rsv1": f(0xC1, b"a"),
        "rsv2": f(0xA1, b"a"),
        "rsv3": f(0x91, b"a"),
        "rsv1_cont": f(0x41, b"a") + f(0xC0, b"b"),
        "rsv1_ping": f(0xC9),
        "op3": f(0x83, b"a"),
        "opB": f(0x8B, b"a"),
        "cont_no_start": f(0x80, b"a"),
        "nested_data": f(0x01, b"a") + f(0x81, b"b"),
        "ping_between": f(0x01, b"a") + f(0x89, b"p") + f(0x80, b"b"),
        "many_frags": b"".join(f(0x02 if i == 0 else 0x00, b"z") for i in range(6)) + f(0x80),
        "utf8_split": f(0x01, b"a\xc3") + f(0x80, b"\xa9"),
        "utf8_4split": f(0x01, b"\xf0") + f(0x00, b"\x9f\x98") + f(0x80, b"\x80"),
        "utf8_bad_first": f(0x81, b"\xf8" + b"x" * 99),
        "utf8_surrogate": f(0x81, b"\xed\xa0\x80"),
        "utf8_overlong": f(0x81, b"\xc0\xaf"),
        "utf8_open_end": f(0x81, b"\xe2\x82"),
        "utf8_kosme": f(0x81, "κόσμε".encode()),
        "close_empty": f(0x88),
        "close_1000": f(0x88, b"\x03\xe8bye"),
        "close_1byte": f(0x88, b"\x03"),
        "close_1005": f(0x88, b"\x03\xed"),
        "close_2999": f(0x88, b"\x0b\xb7"),
        "close_4000": f(0x88, b"\x0f\xa0"),
        "close_bad_reason": f(0x88, b"\x03\xe8\xff"),
        "after_close": f(0x88) + f(0x81, b"late"),
        "two_msgs": f(0x81, b"one") + f(0x82, b"two") + f(0x8A),
        "empty_frags": f(0x01) + f(0x00) + f(0x80),
    }
    return s


def write(d, name, data):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)


def main():
    fz = os.path.join(ROOT, "fuzz", "corpus")
    # fuzz_frame: flags (bit0 client, bit1 rsv1 allowed, bit2 64 B limit,
    # bit3 3 fragments), then three chunk-size bytes.
    for name, data in streams(True).items():
        write(os.path.join(fz, "frame"), name, bytes([0x00, 1, 7, 3]) + data)
    for name in ("hello", "frag_hello", "rsv1", "rsv1_cont", "many_frags", "bin256"):
        data = streams(True)[name]
        write(os.path.join(fz, "frame"), name + "_limits", bytes([0x0E, 5, 2, 9]) + data)
    for name in ("hello", "ping", "close_1000", "masked_wrong"):
        data = streams(False).get(name, frame(0x81, b"x", KEY))
        write(os.path.join(fz, "frame"), name + "_client", bytes([0x01, 4, 4, 4]) + data)
    # fuzz_client_frame: flags (bit0 200 B limit, bit1 2 fragments, bit2
    # rsv1 allowed), chunk seed.
    for name, data in streams(False).items():
        write(os.path.join(fz, "client_frame"), name, bytes([0x00, 0x11]) + data)
    for name in ("rsv1", "rsv1_cont", "many_frags", "bin256"):
        write(os.path.join(fz, "client_frame"), name + "_limits",
              bytes([0x07, 0x42]) + streams(False)[name])
    write(os.path.join(fz, "client_frame"), "masked", bytes([0, 1]) + frame(0x81, b"x", KEY))

    # fuzz_handshake: mode byte (bits 0-1 minor version, bit2 pick "c*"
    # protocols), then "\n"-separated lines, "Name:value".
    good = ["GET", "Host:example.com", "Upgrade:websocket", "Connection:Upgrade",
            "Sec-WebSocket-Key:dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version:13"]
    hs = {
        "good": good,
        "good_proto": good + ["Sec-WebSocket-Protocol:chat, superchat"],
        "good_ext": good + ["Sec-WebSocket-Extensions:permessage-deflate; "
                            "client_max_window_bits, x; y=\"1\""],
        "bad_ext": good + ["Sec-WebSocket-Extensions:a;;b=\"c"],
        "post": ["POST"] + good[1:],
        "no_host": good[:1] + good[2:],
        "two_hosts": good + ["Host:b"],
        "no_upgrade": good[:2] + good[3:],
        "no_version": good[:5],
        "version8": good[:5] + ["Sec-WebSocket-Version:8"],
        "bad_key": good[:4] + ["Sec-WebSocket-Key:abc"] + good[5:],
        "lists": ["GET", "Host:a", "Upgrade:h2c, WebSocket", "Connection:keep-alive,  upgrade",
                  "Sec-WebSocket-Key:AAAAAAAAAAAAAAAAAAAAAw==", "Sec-WebSocket-Version:13"],
    }
    for name, lines in hs.items():
        write(os.path.join(fz, "handshake"), name, bytes([0x05]) + "\n".join(lines).encode())
    write(os.path.join(fz, "handshake"), "http10", bytes([0x00]) + "\n".join(good).encode())
    resp = ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            "Sec-WebSocket-Protocol: chat\r\n\r\n")
    write(os.path.join(fz, "handshake"), "resp_good", b"\x01" + resp.encode() + b"\x81\x00")
    write(os.path.join(fz, "handshake"), "resp_400",
          b"\x03HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
    write(os.path.join(fz, "handshake"), "resp_bad_accept",
          b"\x02" + resp.replace("xOo=", "xOX=").encode())
    write(os.path.join(fz, "handshake"), "resp_partial", b"\x01" + resp[:40].encode())

    # fuzz_utf8: chunk-size byte, then text.
    u = {
        "ascii": b"hello, world, this is plain ascii text of some length",
        "two": "é ü ß".encode(), "three": "€ 日本語".encode(), "four": "😀 𐍈".encode(),
        "max": b"\xf4\x8f\xbf\xbf", "min4": b"\xf0\x90\x80\x80", "min3": b"\xe0\xa0\x80",
        "overlong2": b"\xc0\x80", "overlong3": b"\xe0\x80\x80", "overlong4": b"\xf0\x80\x80\x80",
        "surrogate_lo": b"\xed\xa0\x80", "surrogate_hi": b"\xed\xbf\xbf",
        "above_max": b"\xf4\x90\x80\x80", "f5": b"ab\xf5", "ff": b"\xff", "c1": b"\xc1\xbf",
        "lone_cont": b"abc\x80def", "truncated": b"abc\xe2\x82", "mixed": "a€b😀c".encode() * 5,
        "long_ascii_bad": b"a" * 40 + b"\x80" + b"a" * 10,
        "kosme": "κόσμε".encode(),
    }
    for name, data in u.items():
        write(os.path.join(fz, "utf8"), name, b"\x07" + data)


if __name__ == "__main__":
    main()
