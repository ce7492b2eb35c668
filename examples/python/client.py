#!/usr/bin/env python3
"""A Switchyard client in Python, written only from the README,
docs/wire-format.md and the .proto files (no Rust code read).

It talks to a running fleet the way a client in any language would:

1. lists the api's services by server reflection, both
   `grpc.reflection.v1alpha` and `grpc.reflection.v1`;
2. checks `grpc.health.v1` health;
3. binds a queue of its own to the `sample.recorded` notifications (AMQP);
4. posts samples with `Metering/PostSamples` (gRPC);
5. creates an alarm and lists alarms with AMQP RPC calls to topic `alarms`;
6. asks for an alarm that does not exist, over AMQP (the error reply's code
   is `not_found`) and over gRPC (`NOT_FOUND`);
7. sends a `record_samples` cast to topic `collector` (AMQP), then one
   with a sample without an id, and finds that one in the topic's
   dead-letter queue with its reason;
8. reads the statistics back over gRPC until both batches are counted;
9. reads the notifications that announced both batches.

Usage:
  client.py --api 127.0.0.1:8080 --amqp amqp://guest:guest@127.0.0.1:5672/%2f \
            --exchange switchyard [--token TOKEN] [--project demo]

Prints one line per step; exits 0 when every step held, 1 otherwise.
Needs: pip install -r requirements.txt (grpcio, grpcio-tools,
grpcio-reflection, grpcio-health-checking, pika).
"""

import argparse
import importlib
import os
import sys
import tempfile
import time
import uuid

import grpc
import pika
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_ROOT = os.path.join(HERE, "..", "..", "proto", "proto")
PROTO_FILES = [
    "switchyard/metering/v1/metering.proto",
    "switchyard/messaging/v1/messages.proto",
]

# docs/wire-format.md, "Bodies" and "RPC".
CONTENT_TYPE = "application/x-protobuf"
H_METHOD = "x-switchyard-method"
H_KIND = "x-switchyard-kind"
H_STATUS = "x-switchyard-status"
H_EVENT_TYPE = "x-switchyard-event-type"
H_PRIORITY = "x-switchyard-priority"
H_DEAD_LETTER_REASON = "x-switchyard-dead-letter-reason"
H_ORIGINAL_QUEUE = "x-switchyard-original-queue"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


def generate_stubs():
    """Compiles the .proto files with grpcio-tools' bundled protoc."""
    out = tempfile.mkdtemp(prefix="switchyard-py-")
    import grpc_tools

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}",
            f"--python_out={out}", f"--grpc_python_out={out}"] + PROTO_FILES
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed on " + ", ".join(PROTO_FILES))
    sys.path.insert(0, out)
    metering = importlib.import_module("switchyard.metering.v1.metering_pb2")
    metering_grpc = importlib.import_module("switchyard.metering.v1.metering_pb2_grpc")
    messages = importlib.import_module("switchyard.messaging.v1.messages_pb2")
    return metering, metering_grpc, messages


def step(name, detail):
    print(f"ok   {name}: {detail}", flush=True)


def list_services(channel, metadata, version):
    """ServerReflectionInfo, `list_services`. v1 and v1alpha share their
    messages on the wire; only the method path differs."""
    method = f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo"
    call = channel.stream_stream(
        method,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    responses = call(iter([request]), metadata=metadata, timeout=10)
    for response in responses:
        if response.HasField("error_response"):
            raise RuntimeError(f"reflection {version}: {response.error_response.error_message}")
        return sorted(s.name for s in response.list_services_response.service)
    raise RuntimeError(f"reflection {version}: no answer")


class AmqpRpc:
    """AMQP RPC as docs/wire-format.md describes it: declare the exchange,
    check the topic has consumers, publish with mandatory + confirms, read
    the reply from direct reply-to on the same channel."""

    def __init__(self, url, exchange):
        self.exchange = exchange
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        # 1. Declare the exchange we publish to (topic, durable).
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        self.channel.confirm_delivery()
        self.replies = {}
        self.channel.basic_consume(DIRECT_REPLY_TO, self._on_reply, auto_ack=True)

    def _on_reply(self, _channel, _method, properties, body):
        self.replies[properties.correlation_id] = (properties, body)

    def has_consumers(self, topic):
        # 2. A passive declare of `<x>.<topic>` on a throwaway channel (a
        # missing queue closes that channel).
        probe = self.connection.channel()
        try:
            declared = probe.queue_declare(f"{self.exchange}.{topic}", passive=True)
            return declared.method.consumer_count > 0
        except pika.exceptions.ChannelClosedByBroker:
            return False
        finally:
            if probe.is_open:
                probe.close()

    def _properties(self, method, kind, **more):
        return pika.BasicProperties(
            content_type=CONTENT_TYPE,
            message_id=uuid.uuid4().hex,
            timestamp=int(time.time()),
            headers={H_METHOD: method, H_KIND: kind},
            **more,
        )

    def call(self, topic, method, request, response_type, timeout_s=10.0):
        if not self.has_consumers(topic):
            raise RuntimeError(f"no consumer on topic `{topic}`")
        correlation = uuid.uuid4().hex
        properties = self._properties(
            method, "call",
            correlation_id=correlation,
            reply_to=DIRECT_REPLY_TO,
            expiration=str(int(timeout_s * 1000)),
        )
        self.channel.basic_publish(self.exchange, topic, request.SerializeToString(),
                                   properties, mandatory=True)
        deadline = time.monotonic() + timeout_s
        while correlation not in self.replies:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}/{method}: no reply in {timeout_s} s")
            self.connection.process_data_events(time_limit=0.1)
        properties, body = self.replies.pop(correlation)
        status = (properties.headers or {}).get(H_STATUS)
        if status == "ok":
            return response_type.FromString(body)
        if status == "error":
            raise self.rpc_error(f"{topic}/{method}", body)
        raise RuntimeError(f"{topic}/{method}: reply with status {status!r}")

    def cast(self, topic, method, request):
        properties = self._properties(method, "cast", delivery_mode=2)
        # With confirms, an unroutable mandatory publish raises UnroutableError
        # and a nack (the queue is full) raises NackError.
        self.channel.basic_publish(self.exchange, topic, request.SerializeToString(),
                                   properties, mandatory=True)

    def observe(self, exchange, binding):
        """A queue of our own on the notification exchange, as a pool's
        (exclusive here: it goes when this connection closes)."""
        self.channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        queue = self.channel.queue_declare("", exclusive=True).method.queue
        self.channel.queue_bind(queue, exchange, routing_key=binding)
        return queue

    def next_message(self, queue, deadline, what):
        """The next message on `queue`, as (properties, body); waits until
        `deadline` (time.monotonic()) at the most."""
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is not None:
                return properties, body
            if time.monotonic() > deadline:
                raise SystemExit(f"{queue}: {what}: nothing there in time")
            self.connection.process_data_events(time_limit=0.1)

    def close(self):
        self.connection.close()


class RemoteError(RuntimeError):
    """A call's error reply: an RpcError (kind, code, message)."""

    def __init__(self, where, kind, code, message):
        super().__init__(f"{where}: {kind} {code}: {message}")
        self.kind, self.code = kind, code


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="the api's gRPC address, host:port")
    parser.add_argument("--amqp", required=True, help="the broker's AMQP URL")
    parser.add_argument("--exchange", default="switchyard", help="amqp.exchange of the fleet")
    parser.add_argument("--token", default=os.environ.get("SWITCHYARD_TOKEN"),
                        help="a bearer token the api accepts (api.auth_tokens)")
    parser.add_argument("--project", default="python-example", help="project_id of the samples")
    args = parser.parse_args()

    metering, metering_grpc, messages = generate_stubs()
    AmqpRpc.rpc_error = staticmethod(lambda where, body: _rpc_error(messages, where, body))
    # RFC 9110 §11.1: the scheme name is case-insensitive; lower case on purpose.
    metadata = [("authorization", f"bearer {args.token}")] if args.token else []

    channel = grpc.insecure_channel(args.api)
    grpc.channel_ready_future(channel).result(timeout=10)

    for version in ("v1alpha", "v1"):
        services = list_services(channel, metadata, version)
        assert "switchyard.metering.v1.Metering" in services, services
        step(f"reflection {version}", ", ".join(services))

    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="switchyard.metering.v1.Metering"), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING, health
    step("health", "SERVING")

    api = metering_grpc.MeteringStub(channel)
    now = time.time()
    meter = f"py.{uuid.uuid4().hex[:8]}"

    def sample(volume, sample_id=""):
        s = metering.Sample(id=sample_id, meter=meter, unit="%", volume=volume,
                            resource_id="vm-py", project_id=args.project)
        s.timestamp.FromSeconds(int(now))
        return s

    rpc = AmqpRpc(args.amqp, args.exchange)
    observer = rpc.observe(f"{args.exchange}.notifications", "notifications.*.sample.recorded")

    posted = api.PostSamples(metering.PostSamplesRequest(samples=[sample(10.0), sample(20.0)]),
                             metadata=metadata, timeout=10)
    assert len(posted.ids) == 2, posted
    step("PostSamples", f"2 samples of {meter}, ids assigned: {', '.join(posted.ids)}")

    alarm = metering.Alarm(name=f"{meter} high", meter=meter, project_id=args.project,
                           statistic=metering.STATISTIC_AVG, comparison=metering.COMPARISON_GT, threshold=1e9,
                           period_seconds=60, evaluation_periods=1,
                           webhook_url="http://127.0.0.1:9/unused")
    created = rpc.call("alarms", "create_alarm", metering.CreateAlarmRequest(alarm=alarm),
                       metering.Alarm)
    assert created.id, created
    step("create_alarm (AMQP call)", f"alarm {created.id}")
    listed = rpc.call("alarms", "list_alarms", metering.ListAlarmsRequest(project_id=args.project),
                      metering.ListAlarmsResponse)
    assert created.id in [a.id for a in listed.alarms], listed
    step("list_alarms (AMQP call)", f"{len(listed.alarms)} alarm(s), ours among them")

    # A failed call answers with an error code from the catalogue's table,
    # and the api answers the gRPC status that table names for it.
    missing = f"no-such-alarm-{uuid.uuid4().hex[:8]}"
    try:
        rpc.call("alarms", "get_alarm", metering.GetAlarmRequest(id=missing), metering.Alarm)
        raise AssertionError(f"get_alarm {missing}: answered ok")
    except RemoteError as error:
        assert (error.kind, error.code) == ("REMOTE", "not_found"), error
    step("get_alarm of an unknown id (AMQP call)", "REMOTE not_found")
    try:
        api.GetAlarm(metering.GetAlarmRequest(id=missing), metadata=metadata, timeout=10)
        raise AssertionError(f"GetAlarm {missing}: answered ok")
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, error
    step("GetAlarm of an unknown id", "NOT_FOUND")

    # The cast carries ids: on the wire to the collector they are required.
    cast_ids = [f"py-{uuid.uuid4().hex}" for _ in range(3)]
    batch = messages.RecordSamples(samples=[sample(30.0, i) for i in cast_ids])
    rpc.cast("collector", "record_samples", batch)
    step("record_samples (AMQP cast)", "3 samples, confirmed by the broker")

    # A cast the collector cannot use is not lost: it is parked in the
    # topic's dead-letter queue with the reason. Here, a sample without an id.
    rpc.cast("collector", "record_samples", messages.RecordSamples(samples=[sample(40.0)]))
    dead_letters = f"{args.exchange}.collector.dlq"
    deadline = time.monotonic() + 30
    while True:
        properties, body = rpc.next_message(dead_letters, deadline, "the cast without an id")
        if meter in [s.meter for s in messages.RecordSamples.FromString(body).samples]:
            break
    headers = properties.headers or {}
    reason = headers.get(H_DEAD_LETTER_REASON, "")
    assert "samples[0].id" in reason, headers
    assert headers.get(H_ORIGINAL_QUEUE) == f"{args.exchange}.collector", headers
    step("record_samples without an id (AMQP cast)", f"dead-lettered: {reason}")

    request = metering.GetStatisticsRequest(meter=meter, project_id=args.project)
    request.start.FromSeconds(int(now) - 3600)
    request.end.FromSeconds(int(now) + 3600)
    deadline = time.monotonic() + 30
    while True:
        stats = api.GetStatistics(request, metadata=metadata, timeout=10)
        count = sum(b.count for b in stats.buckets)
        if count == 5:
            bucket = stats.buckets[0]
            step("GetStatistics", f"count {count}, avg {bucket.avg:g}, max {bucket.max:g}")
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"GetStatistics: count {count} after 30 s, expected 5")
        time.sleep(0.2)

    # Both batches were stored, so both were announced: one `sample.recorded`
    # per batch, read as an operator's own pool would.
    announced = 0
    deadline = time.monotonic() + 30
    while announced < 5:
        properties, body = rpc.next_message(
            observer, deadline, f"sample.recorded for 5 samples of {meter} ({announced} so far)")
        headers = properties.headers or {}
        assert (headers.get(H_KIND), headers.get(H_EVENT_TYPE), headers.get(H_PRIORITY)) == (
            "notification", "sample.recorded", "info"), headers
        recorded = messages.SampleRecorded.FromString(body)
        if meter in recorded.meters:
            announced += recorded.stored
    step("sample.recorded (AMQP notification)", f"{announced} samples of {meter} announced")
    rpc.close()
    print("all steps held", flush=True)


def _rpc_error(messages, where, body):
    error = messages.RpcError.FromString(body)
    kind = messages.RpcError.Kind.Name(error.kind)
    return RemoteError(where, kind, error.code, error.message)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, RuntimeError, TimeoutError, grpc.RpcError) as failure:
        print(f"FAIL {type(failure).__name__}: {failure}", file=sys.stderr, flush=True)
        sys.exit(1)
