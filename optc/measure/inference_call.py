"""One inference as it is timed: ``session.run`` on the CPU, IO binding on CUDA.

``session.run`` on CUDA copies every input to the device and every output back, and those copies can cost more than
the model itself. With IO binding the inputs are put on the device once, outputs stay there, and each timed call
ends with a device synchronization, so the time is the model's compute and nothing else. ``include_copies`` binds
host memory instead, which times what a caller passing numpy arrays would see.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from optc.measure.providers import ORT_NAMES

DEVICE_ID = 0


def inference_call(
    session: ort.InferenceSession, feed: dict[str, np.ndarray], include_copies: bool = False
) -> Callable[[], None]:
    """A no-argument function that runs ``session`` once on ``feed`` and returns when the result is ready."""
    inputs = {i.name: feed[i.name] for i in session.get_inputs()}
    if session.get_providers()[0] != ORT_NAMES["cuda"]:

        def run_on_host() -> None:
            session.run(None, inputs)

        return run_on_host
    return _bound_call(session, inputs, include_copies)


def _bound_call(
    session: ort.InferenceSession, inputs: dict[str, np.ndarray], include_copies: bool
) -> Callable[[], None]:
    binding = session.io_binding()
    output_device = "cpu" if include_copies else "cuda"
    # Keep the device copies referenced for as long as the binding lives.
    on_device = {}
    for name, array in inputs.items():
        if include_copies:
            binding.bind_cpu_input(name, array)
        else:
            on_device[name] = ort.OrtValue.ortvalue_from_numpy(array, "cuda", DEVICE_ID)
            binding.bind_ortvalue_input(name, on_device[name])
    for output in session.get_outputs():
        binding.bind_output(output.name, output_device, DEVICE_ID)
    binding.synchronize_inputs()

    def run_bound() -> None:
        session.run_with_iobinding(binding)
        # run_with_iobinding may return before the GPU is done; the time must include the work, not its launch.
        binding.synchronize_outputs()

    return run_bound
