"""``zoo serve``: a certified model over HTTP, on the KServe v2 / Open Inference Protocol.

Every answer carries, per example, the logits, the predicted class, the margin and the certified
L2 radius computed from the Lipschitz bound of the file being served. A request meets, in order:

* :mod:`zoo.app.serve.connection` — the HTTP connection: a time limit on request heads, JSON 400s;
* :mod:`zoo.app.serve.app` — the routes, the body limits and the ``{"error": ...}`` answers;
* :mod:`zoo.app.serve.triton` — the parts of Triton's extensions its clients call (with
  :mod:`zoo.app.serve.statistics`, the inference statistics);
* :mod:`zoo.app.serve.protocol` — the wire format: parsing and validating requests, encoding responses;
* :mod:`zoo.app.serve.batcher` — dynamic batching of concurrent requests into one model call;
* :mod:`zoo.app.serve.model` — the verified ONNX artifact, its onnxruntime session and derived outputs.

:mod:`zoo.app.serve.limits` states what one client may cost; :mod:`zoo.app.serve.server` runs the
app under uvicorn and drains it on SIGTERM (:mod:`zoo.app.serve.drain`).
"""

from zoo.app.serve.limits import Limits
from zoo.app.serve.model import ArtifactError, ServedModel, open_model
from zoo.app.serve.server import serve

__all__ = ["ArtifactError", "Limits", "ServedModel", "open_model", "serve"]
