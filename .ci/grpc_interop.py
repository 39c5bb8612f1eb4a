"""gRPC interop: Python grpcio against a live Wharf (`python grpc_interop.py HOST:PORT`).

Uses stubs generated from crates/wharf-proto/proto/wharf/v1/wharf.proto (on PYTHONPATH) and
checks: topics, publish with dedup by wharf-message-id, read, a stream subscription consumed
with the server-streaming Consume (assignment first, then the messages) and committed, a queue
received and acked, an error's trailing metadata (wharf-error-code), and the bidi Process
stream. Every call has a deadline. Exits non-zero with a message on the first mismatch.
"""

import queue
import sys
import time

import grpc

from wharf.v1 import wharf_pb2 as pb
from wharf.v1 import wharf_pb2_grpc as rpc

UNARY_TIMEOUT = 30.0
STREAM_TIMEOUT = 60.0


class Mismatch(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Mismatch(what)


def step(name):
    print(f"grpc interop: {name}", flush=True)


def expect_error(call, code, wharf_code, what):
    """Runs call(); it must fail with `code` and trailing metadata wharf-error-code."""
    try:
        got = call()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: expected {code}, got {e.code()} {e.details()!r}")
        trailers = dict(e.trailing_metadata() or ())
        check(
            trailers.get("wharf-error-code") == wharf_code,
            f"{what}: expected wharf-error-code={wharf_code}, trailing metadata {trailers}",
        )
        check(bool(e.details()), f"{what}: no error message")
        return e
    raise Mismatch(f"{what}: expected {code}, got an answer: {got}")


def main(addr):
    # No proxy for the local server, whatever the environment says.
    channel = grpc.insecure_channel(addr, options=[("grpc.enable_http_proxy", 0)])
    grpc.channel_ready_future(channel).result(timeout=UNARY_TIMEOUT)
    topics = rpc.TopicsStub(channel)
    messages = rpc.MessagesStub(channel)
    subs = rpc.SubscriptionsStub(channel)
    stream = rpc.StreamConsumerStub(channel)
    shared = rpc.SharedConsumerStub(channel)
    ops = rpc.OperationsStub(channel)
    t = UNARY_TIMEOUT

    step("CreateTopic")
    topic = topics.CreateTopic(
        pb.CreateTopicRequest(name="interop", config=pb.TopicConfig(partitions=2)), timeout=t
    )
    check(topic.name == "interop", f"topic name: {topic}")
    check(len(topic.partitions) == 2, f"two partitions: {topic}")
    again = topics.CreateTopic(
        pb.CreateTopicRequest(name="interop", config=pb.TopicConfig(partitions=2)), timeout=t
    )
    check(again == topic, f"CreateTopic is idempotent: {again} vs {topic}")
    expect_error(
        lambda: topics.CreateTopic(
            pb.CreateTopicRequest(name="interop", config=pb.TopicConfig(partitions=3)), timeout=t
        ),
        grpc.StatusCode.ALREADY_EXISTS,
        "topic_exists",
        "CreateTopic with other settings",
    )

    step("Publish with a wharf-message-id, twice")
    hello = pb.PublishMessage(
        key=b"k", value=b"hello", partition=0, headers={"wharf-message-id": "interop-1"}
    )
    first, call = messages.Publish.with_call(
        pb.PublishRequest(topic="interop", messages=[hello]), timeout=t
    )
    check(len(first.results) == 1, f"one result: {first}")
    r = first.results[0]
    check((r.partition, r.offset, r.duplicate) == (0, 0, False), f"first publish: {r}")
    check(r.timestamp_ms > 0, f"a timestamp: {r}")
    initial = dict(call.initial_metadata() or ())
    check("traceparent" in initial, f"a traceparent in the response metadata: {initial}")
    dup = messages.Publish(pb.PublishRequest(topic="interop", messages=[hello]), timeout=t)
    d = dup.results[0]
    check(d.duplicate, f"the retry is a duplicate: {d}")
    check((d.partition, d.offset) == (0, 0), f"the duplicate answers the original: {d}")

    step("Read")
    read = messages.Read(
        pb.ReadRequest(
            topic="interop", partition=0, **{"from": pb.Position(edge=pb.EDGE_EARLIEST)}
        ),
        timeout=t,
    )
    check([m.value for m in read.messages] == [b"hello"], f"read back: {read}")
    m = read.messages[0]
    check(m.key == b"k", f"key: {m}")
    check(m.headers.get("wharf-message-id") == "interop-1", f"headers: {m}")
    check(read.next_offset == 1 and read.high_watermark == 1, f"positions: {read}")

    step("CreateSubscription (stream) + Consume")
    sub = subs.CreateSubscription(
        pb.CreateSubscriptionRequest(topic="interop", name="py-stream", stream=pb.StreamConfig()),
        timeout=t,
    )
    check(sub.WhichOneof("config") == "stream", f"a stream subscription: {sub}")
    messages.Publish(
        pb.PublishRequest(
            topic="interop",
            messages=[
                pb.PublishMessage(value=b"a", partition=1),
                pb.PublishMessage(value=b"b", partition=1),
            ],
        ),
        timeout=t,
    )
    consume = stream.Consume(
        pb.ConsumeRequest(topic="interop", subscription="py-stream"), timeout=STREAM_TIMEOUT
    )
    first_event = next(consume)
    check(
        first_event.WhichOneof("event") == "assignment",
        f"the first event is the assignment: {first_event}",
    )
    member = first_event.assignment.member_id
    check(member, f"a member id: {first_event}")
    check(list(first_event.assignment.partitions) == [0, 1], f"all partitions: {first_event}")
    got = []
    while len(got) < 3:
        ev = next(consume)
        check(ev.WhichOneof("event") == "messages", f"messages after the assignment: {ev}")
        got.extend(ev.messages.messages)
    by_partition = sorted((m.partition, m.offset, m.value) for m in got)
    check(
        by_partition == [(0, 0, b"hello"), (1, 0, b"a"), (1, 1, b"b")],
        f"consumed: {by_partition}",
    )
    committed = stream.Commit(
        pb.CommitRequest(
            topic="interop",
            subscription="py-stream",
            member_id=member,
            offsets=[pb.Committed(partition=0, offset=1), pb.Committed(partition=1, offset=2)],
        ),
        timeout=t,
    )
    check(
        sorted((c.partition, c.offset) for c in committed.offsets) == [(0, 1), (1, 2)],
        f"committed: {committed}",
    )
    desc = subs.GetSubscription(
        pb.GetSubscriptionRequest(topic="interop", name="py-stream"), timeout=t
    )
    check(
        [(p.committed, p.lag) for p in desc.partitions] == [(1, 0), (2, 0)],
        f"the subscription after the commit: {desc}",
    )
    check(list(desc.members) == [member], f"the stream is a member: {desc}")
    consume.cancel()

    step("CreateQueue + Publish + Receive + Ack")
    q = topics.CreateQueue(pb.CreateQueueRequest(name="py-queue"), timeout=t)
    check(q.topic.name == "py-queue" and q.subscription.name == "py-queue", f"queue: {q}")
    check(q.subscription.WhichOneof("config") == "shared", f"a shared subscription: {q}")
    messages.Publish(
        pb.PublishRequest(topic="py-queue", messages=[pb.PublishMessage(value=b"job-1")]),
        timeout=t,
    )
    received = shared.Receive(
        pb.ReceiveRequest(topic="py-queue", subscription="py-queue", max=1, wait_ms=5000),
        timeout=t,
    )
    check(len(received.deliveries) == 1, f"one delivery: {received}")
    delivery = received.deliveries[0]
    check(delivery.message.value == b"job-1", f"the job: {delivery}")
    check(delivery.delivery_count == 1, f"first delivery: {delivery}")
    acked = shared.Ack(
        pb.AckRequest(topic="py-queue", subscription="py-queue", ack_ids=[delivery.ack_id]),
        timeout=t,
    )
    check(len(acked.outcomes) == 1, f"one outcome: {acked}")
    check(
        acked.outcomes[0].ack_id == delivery.ack_id and not acked.outcomes[0].HasField("error"),
        f"acked: {acked}",
    )

    step("an error's trailing metadata")
    expect_error(
        lambda: topics.GetTopic(pb.GetTopicRequest(name="no-such-topic"), timeout=t),
        grpc.StatusCode.NOT_FOUND,
        "topic_not_found",
        "GetTopic of a missing topic",
    )
    expect_error(
        lambda: messages.Publish(
            pb.PublishRequest(topic="no-such-topic", messages=[pb.PublishMessage(value=b"x")]),
            timeout=t,
        ),
        grpc.StatusCode.NOT_FOUND,
        "topic_not_found",
        "Publish to a missing topic",
    )
    expect_error(
        lambda: topics.CreateTopic(pb.CreateTopicRequest(name="Not Valid"), timeout=t),
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid_name",
        "CreateTopic with a bad name",
    )

    step("Process (bidi)")
    messages.Publish(
        pb.PublishRequest(
            topic="py-queue",
            messages=[pb.PublishMessage(value=b"job-2"), pb.PublishMessage(value=b"job-3")],
        ),
        timeout=t,
    )
    requests = queue.Queue()
    requests.put(
        pb.ProcessRequest(
            start=pb.ProcessStart(topic="py-queue", subscription="py-queue", max_in_flight=1)
        )
    )

    def outgoing():
        while True:
            item = requests.get(timeout=STREAM_TIMEOUT)
            if item is None:
                return
            yield item

    responses = shared.Process(outgoing(), timeout=STREAM_TIMEOUT)
    processed = []
    settled = 0
    unsettled = 0
    for resp in responses:
        kind = resp.WhichOneof("response")
        if kind == "deliveries":
            unsettled += len(resp.deliveries.deliveries)
            check(unsettled <= 1, f"max_in_flight 1 exceeded: {resp}")
            for dl in resp.deliveries.deliveries:
                processed.append(dl.message.value)
                unsettled -= 1
                requests.put(
                    pb.ProcessRequest(
                        settle=pb.Settle(action=pb.SETTLE_ACTION_ACK, ack_ids=[dl.ack_id])
                    )
                )
        elif kind == "settled":
            check(resp.settled.action == pb.SETTLE_ACTION_ACK, f"settled: {resp}")
            check(
                len(resp.settled.outcomes) == 1 and not resp.settled.outcomes[0].HasField("error"),
                f"settled outcomes: {resp}",
            )
            settled += 1
            if settled == 2:
                requests.put(None)  # close our side: the call ends
        else:
            raise Mismatch(f"an empty ProcessResponse: {resp}")
    check(processed == [b"job-2", b"job-3"], f"processed: {processed}")
    check(settled == 2, f"two settled answers: {settled}")
    desc = subs.GetSubscription(
        pb.GetSubscriptionRequest(topic="py-queue", name="py-queue"), timeout=t
    )
    check(desc.in_flight == 0, f"nothing in flight: {desc}")
    check([p.committed for p in desc.partitions] == [3], f"all three finished: {desc}")

    step("GetStats")
    stats = ops.GetStats(pb.GetStatsRequest(), timeout=t)
    check(stats.writable, f"writable: {stats}")
    names = [x.name for x in stats.topics]
    check("interop" in names and "py-queue" in names, f"topics in the stats: {names}")
    channel.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: grpc_interop.py HOST:PORT")
    started = time.monotonic()
    try:
        main(sys.argv[1])
    except Mismatch as e:
        sys.exit(f"grpc interop: MISMATCH: {e}")
    except grpc.RpcError as e:
        sys.exit(f"grpc interop: unexpected RPC error: {e.code()} {e.details()!r}")
    except grpc.FutureTimeoutError:
        sys.exit("grpc interop: the server did not become ready in time")
    except StopIteration:
        sys.exit("grpc interop: a stream ended early")
    print(f"grpc interop: ok in {time.monotonic() - started:.1f}s")
