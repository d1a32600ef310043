#!/usr/bin/env python3
"""A producer in another language, written from schemas/README.md alone: Python code
generated from schemas/greeter/greeter.proto (grpc_tools.protoc) sends greeter requests as
application/x-protobuf over RabbitMQ (pika) or Kafka (confluent-kafka) and decodes the
replies. Prints one JSON line per reply for the test that runs it (tests/support/python.rs).

usage: protobuf_client.py amqp URL QUEUE REPLIES
       protobuf_client.py kafka BOOTSTRAP TOPIC REPLY_TOPIC
"""
import importlib, json, os, sys, tempfile, uuid

from grpc_tools import protoc

SCHEMAS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas")
PROTOBUF = "application/x-protobuf"


def generated():
    out = tempfile.mkdtemp(prefix="courier-pb-")
    for folder, name in [("greeter", "greeter.proto"), ("envelope", "error-reply.proto")]:
        code = protoc.main(["protoc", f"-I{os.path.join(SCHEMAS, folder)}", f"--python_out={out}", name])
        if code != 0:
            sys.exit(f"protoc failed on {name}")
    sys.path.insert(0, out)
    return importlib.import_module("greeter_pb2"), importlib.import_module("error_reply_pb2")


def requests(greeter_pb2):
    """(correlation id, payload): a greeting, an empty message, bytes that are no message."""
    return [
        (str(uuid.uuid4()), greeter_pb2.Request(message="Ada").SerializeToString()),
        (str(uuid.uuid4()), greeter_pb2.Request(message="").SerializeToString()),
        (str(uuid.uuid4()), b"\x0a\x05Ad"),
    ]


def describe(cid, status, content_type, body, greeter_pb2, error_pb2):
    line = {"correlation_id": cid, "status": status, "content_type": content_type}
    if status == "ok":
        line["result"] = greeter_pb2.Response.FromString(body).result
    else:
        error = error_pb2.ErrorReply.FromString(body).error
        line["error"] = {"kind": error.kind, "code": error.code, "message": error.message}
    print(json.dumps(line), flush=True)


def over_amqp(url, queue, replies, greeter_pb2, error_pb2):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.confirm_delivery()
    sent = requests(greeter_pb2)
    for cid, payload in sent:
        props = pika.BasicProperties(delivery_mode=2, content_type=PROTOBUF, correlation_id=cid,
                                     reply_to=replies, headers={"courier-message-id": cid})
        ch.basic_publish("", queue, payload, props)
    waiting = {cid for cid, _ in sent}
    for method, props, body in ch.consume(replies, inactivity_timeout=20):
        if method is None:
            break
        ch.basic_ack(method.delivery_tag)
        if props.correlation_id in waiting:
            waiting.discard(props.correlation_id)
            describe(props.correlation_id, props.type, props.content_type, body, greeter_pb2, error_pb2)
        if not waiting:
            break
    conn.close()


def over_kafka(bootstrap, topic, reply_topic, greeter_pb2, error_pb2):
    import time

    from confluent_kafka import Consumer, Producer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"pb-client-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "fetch.wait.max.ms": 10})
    consumer.subscribe([reply_topic])
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    sent = requests(greeter_pb2)
    for cid, payload in sent:
        headers = [("courier-message-id", cid), ("courier-correlation-id", cid),
                   ("courier-reply-to", reply_topic), ("content-type", PROTOBUF)]
        producer.produce(topic, value=payload, key=cid, headers=headers)
    if producer.flush(10) != 0:
        sys.exit("requests not delivered")
    waiting = {cid for cid, _ in sent}
    deadline = time.monotonic() + 30
    while waiting and time.monotonic() < deadline:
        record = consumer.poll(0.5)
        if record is None or record.error():
            continue
        headers = {k: v.decode() for k, v in (record.headers() or [])}
        cid = headers.get("courier-correlation-id")
        if cid in waiting:
            waiting.discard(cid)
            describe(cid, headers.get("courier-status"), headers.get("content-type"), record.value(),
                     greeter_pb2, error_pb2)
    consumer.close()


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("amqp", "kafka"):
        sys.exit(__doc__)
    greeter_pb2, error_pb2 = generated()
    send = over_amqp if sys.argv[1] == "amqp" else over_kafka
    send(*sys.argv[2:], greeter_pb2, error_pb2)


if __name__ == "__main__":
    main()
