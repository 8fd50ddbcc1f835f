"""A consumer process for the bus tests: handles Alert events from one topic.

Its handler is idempotent: it adds the event id to a Redis set (the effect) and counts its
own calls (to show redelivery). With ``--hang-on-first`` it blocks forever after the first
successful handling, i.e. after handling and before the commit, so a test can SIGKILL it there.
"""

from __future__ import annotations

import argparse
import sys
import threading

from shared.bus import ConsumerLoop, EventProducer, RetryPolicy, stop_on_signals
from shared.events import Alert
from shared.ports import Message
from shared.redis_store import connect
from shared.settings import KafkaSettings, RedisSettings, TelemetrySettings
from shared.telemetry import setup_telemetry


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--dlq", required=True)
    ap.add_argument("--traces-dir", required=True)
    ap.add_argument("--redis-key", required=True)
    ap.add_argument("--hang-on-first", action="store_true")
    ap.add_argument("--slow-s", type=float, default=0.0)
    args = ap.parse_args()

    tel = setup_telemetry(
        "bus-worker", TelemetrySettings(exporter="jsonl", traces_dir=args.traces_dir)
    )
    kafka = KafkaSettings()
    r = connect(RedisSettings())
    producer = EventProducer(kafka, tracer=tel.tracer)
    first = threading.Event()

    def handle(msg: Message[Alert]) -> None:
        r.incr(f"{args.redis_key}:calls")
        r.sadd(f"{args.redis_key}:ids", msg.event.event_id)
        print(f"HANDLED {msg.event.event_id} {msg.partition}:{msg.offset}", flush=True)
        if args.slow_s:
            threading.Event().wait(args.slow_s)
        if args.hang_on_first and not first.is_set():
            first.set()
            print("HANGING", flush=True)
            threading.Event().wait()

    loop = ConsumerLoop(
        kafka,
        group_id=args.group,
        topics=[args.topic],
        event_type=Alert,
        producer=producer,
        handler=handle,
        retry=RetryPolicy(max_attempts=2, backoff_s=0.05),
        tracer=tel.tracer,
        dlq_topic_for=lambda _t: args.dlq,
    )
    stop_on_signals(loop)
    print("READY", flush=True)
    loop.run()
    producer.close()
    tel.shutdown()
    print("EXITED", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
