"""AOT compilation report (on the local CPU devices; TPU slices need libtpu)."""

from sophia_jax import aot, sharding
from sophia_jax.configs import models
from sophia_jax.models import RuntimeConfig


def test_compile_forward_reports_memory_and_flops():
    config = models.model_config(models.get_config("tiny"))
    report = aot.compile_forward(config, RuntimeConfig(), "local", sharding.MeshConfig(1, 2, 4), batch=4, length=64)
    assert report.devices == 8 and report.mesh == {"data": 1, "fsdp": 2, "tensor": 4}
    assert report.argument_bytes > 0 and report.total_bytes >= report.argument_bytes
    assert "per device" in report.summary()
