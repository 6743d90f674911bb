#!/usr/bin/env python3
"""Writes the `session` target's seed inputs into seeds/ (run from drivers/mqtt/fuzz).

Each input is one mode byte followed by the packets a sensor sends after its login, which
the target performs itself (CONNECT as sensor1@app with a password, then a successful
authentication). The mode byte: bit 0 picks MQTT 3.1.1 (0) or 5 (1), bit 1 makes every ingest
fail with "quota exceeded", and the high nibble is the in-flight window minus one.
"""

import os


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    raw = text.encode() if isinstance(text, str) else text
    return len(raw).to_bytes(2, "big") + raw


def packet(first, body):
    return bytes([first]) + varint(len(body)) + body


def props(*items):
    body = b"".join(items)
    return varint(len(body)) + body


def content_type(ct):
    return b"\x03" + s(ct)


def publish(v5, topic, payload, qos=0, pkid=1, properties=b""):
    body = s(topic)
    if qos:
        body += pkid.to_bytes(2, "big")
    if v5:
        body += props(properties)
    return packet(0x30 | (qos << 1), body + payload)


def subscribe(v5, pkid, *filters):
    body = pkid.to_bytes(2, "big") + (props() if v5 else b"")
    for path, qos in filters:
        body += s(path) + bytes([qos])
    return packet(0x82, body)


def unsubscribe(v5, pkid, *filters):
    body = pkid.to_bytes(2, "big") + (props() if v5 else b"")
    return packet(0xA2, body + b"".join(s(f) for f in filters))


def puback(pkid):
    return packet(0x40, pkid.to_bytes(2, "big"))


def connect(v5, username, password, client_id="sensor1"):
    flags = 0xC2  # username, password, clean session
    body = s("MQTT") + bytes([5 if v5 else 4, flags]) + (30).to_bytes(2, "big")
    if v5:
        body += props()
    body += s(client_id) + s(username) + s(password)
    return packet(0x10, body)


PINGREQ = b"\xc0\x00"
DISCONNECT = b"\xe0\x00"
JSON = b'{"temp":21.5}'


def seeds():
    for v5 in (False, True):
        name = "v5" if v5 else "v311"
        mode = 1 if v5 else 0
        ct = content_type("application/json") if v5 else b""
        # telemetry at QoS 0 and 1, on <channel> and <channel>/<own device>
        yield f"{name}-publish", bytes([mode]) + b"".join([
            publish(v5, "temperature", JSON, properties=ct),
            publish(v5, "temperature", JSON, qos=1, pkid=1),
            publish(v5, "temperature/sensor1", b"\x01\x02\x03", qos=1, pkid=2),
            PINGREQ,
            DISCONNECT,
        ])
        # command subscription at QoS 1, the first command acknowledged, unsubscribe
        yield f"{name}-commands", bytes([mode]) + b"".join([
            subscribe(v5, 1, ("command/inbox/#", 1), ("command/inbox//#", 0)),
            PINGREQ,
            puback(1),
            publish(v5, "status", b"on", qos=1, pkid=2),
            puback(2),
            unsubscribe(v5, 3, "command/inbox/#"),
            DISCONNECT,
        ])
        # a window of four QoS 1 publishes with every ingest refused (quota exceeded)
        yield f"{name}-quota-window", bytes([mode | 0x02 | 0x30]) + b"".join(
            [publish(v5, "temperature", JSON, qos=1, pkid=i) for i in range(1, 7)]
            + [DISCONNECT]
        )
        # refusals: another device's topic, a refused filter, QoS 2
        yield f"{name}-refused", bytes([mode]) + b"".join([
            subscribe(v5, 1, ("sensors/#", 1)),
            publish(v5, "temperature/sensor2", JSON, qos=1, pkid=2),
            publish(v5, "temperature", JSON, qos=2, pkid=3),
        ])
        # a second CONNECT with credentials on a session already logged in
        yield f"{name}-connect-again", bytes([mode]) + connect(v5, "sensor1@app", "pw") + PINGREQ
    # v5 only: a JSON content type on a payload that is not JSON, a short DISCONNECT with a
    # reason code
    yield "v5-content-type", bytes([1]) + b"".join([
        publish(True, "temperature", b"not json", qos=1, pkid=1,
                properties=content_type("application/json")),
        publish(True, "temperature", b"\x00\x01", qos=1, pkid=2,
                properties=content_type("application/octet-stream")),
        b"\xe0\x01\x04",
    ])


def main():
    os.makedirs("seeds", exist_ok=True)
    for name, data in seeds():
        with open(os.path.join("seeds", name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
