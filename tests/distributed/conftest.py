import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance (2 CPUs) for the whole test session (starting one takes ~15 s)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed: pip install bayesal[ray] (CI installs it)")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()
