"""Run by the e2e tests with ``.venvs/triton/bin/python`` (which has NVIDIA's
``tritonclient``): the real Triton/KServe client talks to the Modelium gateway as it would
to a tritonserver, binary tensors in and out. Prints one JSON line of what it saw.

Usage: kserve_client.py HOST:PORT MODEL INPUT_NAME OUTPUT_NAME SHAPE_RANK TEXT...
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.http as httpclient


def main() -> None:
    url, model, input_name, output_name, rank, *texts = sys.argv[1:]
    client = httpclient.InferenceServerClient(url=url)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "metadata": client.get_model_metadata(model),
    }
    rows = np.array([[t] for t in texts] if rank == "2" else texts, dtype=np.object_)
    tensor = httpclient.InferInput(input_name, list(rows.shape), "BYTES")
    tensor.set_data_from_numpy(rows, binary_data=True)
    result = client.infer(model, [tensor], outputs=[httpclient.InferRequestedOutput(output_name, binary_data=True)])
    values = result.as_numpy(output_name).reshape(-1)
    report["outputs"] = [json.loads(v.decode() if isinstance(v, bytes) else v) for v in values]
    report["binary"] = "data" not in (result.get_output(output_name) or {})
    print(json.dumps(report))


if __name__ == "__main__":
    main()
