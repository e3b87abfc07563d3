"""Interactive load tests of the service with locust (optional dependency: ``pip install locust``).

    faseg serve --model model.onnx &                                   # or any running server
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000     # web UI on http://127.0.0.1:8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 --headless -u 8 -r 8 -t 60s --csv runs/locust

Each simulated user posts images back to back (closed loop, no think time) to ``POST /v1/segment`` as raw
bodies. Settings come from the environment:

- ``FASEG_LOADTEST_IMAGES``: a folder of .jpg/.png/.webp files to send (default: synthetic JPEGs);
- ``FASEG_LOADTEST_SIZE``: size of the synthetic JPEGs, WxH (default 640x480);
- ``FASEG_LOADTEST_OUTPUTS``: the ``outputs=`` of each request (default ``stats``).

Locust reports requests/s and percentiles; for recorded numbers (open loop, the server's stage breakdown,
report files) use ``faseg loadtest``, whose client costs less CPU per request than locust's.
"""

from __future__ import annotations

import itertools
import os

from locust import FastHttpUser, constant, task

from faseg.loadtest.images import load_folder, parse_wxh, synthetic

_folder = os.environ.get("FASEG_LOADTEST_IMAGES")
PAYLOADS = (
    load_folder(_folder) if _folder else synthetic(16, parse_wxh(os.environ.get("FASEG_LOADTEST_SIZE", "640x480")))
)
OUTPUTS = os.environ.get("FASEG_LOADTEST_OUTPUTS", "stats")
_next_payload = itertools.cycle(PAYLOADS)


class SegmentUser(FastHttpUser):
    """One client sending its next image as soon as the previous answer arrives."""

    wait_time = constant(0)

    @task
    def segment(self) -> None:
        payload = next(_next_payload)
        with self.client.post(
            f"/v1/segment?outputs={OUTPUTS}",
            data=payload.body,
            headers={"Content-Type": payload.content_type},
            name="/v1/segment",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
