"""The frame path as a user would write it by hand with Quix Streams, in one process: the peer
``make bench`` measures StreamLoop's frame path against (``tests/bench/lib/peer.py``).

    var/envs/quix/bin/python infra/peer/quix_peer.py --broker HOST:PORT --frames TOPIC \
        --predictions TOPIC --model MODEL.onnx --classes a,b,c [--group G]

It reads StreamLoop's ``frames.raw`` wire format (JSON, the image in ``image_b64``), decodes
the PNG, classifies it with the exported ONNX graph (uint8 pixels in, probabilities out; one
frame per call, one ONNX Runtime thread) and writes a prediction JSON with the time it was
served (``served_at``, seconds since the epoch). No validation, dead letters, duplicate claims,
traces or model swaps. It runs in its own environment (``infra/peer/requirements.txt``) and
imports nothing of StreamLoop's; it stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import base64
import io
import time
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image
from quixstreams import Application


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--frames", required=True, help="topic of frames (frames.raw format)")
    ap.add_argument("--predictions", required=True, help="topic the predictions go to")
    ap.add_argument("--model", required=True, help="the exported ONNX graph")
    ap.add_argument("--classes", required=True, help="the model's classes, comma-separated")
    ap.add_argument("--group", default="quix-peer")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    classes = args.classes.split(",")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def classify(frame: dict[str, Any]) -> dict[str, Any]:
        png = base64.b64decode(frame["image_b64"])
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        probs = session.run(None, {input_name: pixels[np.newaxis]})[0][0]
        k = int(probs.argmax())
        return {
            "frame_id": frame["frame_id"],
            "camera_id": frame["camera_id"],
            "predicted_class": classes[k],
            "confidence": float(probs[k]),
            "served_at": time.time(),
        }

    app = Application(
        broker_address=args.broker,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        loglevel="WARNING",
    )
    frames = app.topic(args.frames, value_deserializer="json")
    predictions = app.topic(args.predictions, value_serializer="json")
    app.dataframe(frames).apply(classify).to_topic(predictions)
    print("peer ready", flush=True)  # noqa: T201 - the harness waits for this line
    app.run()


if __name__ == "__main__":
    main()
