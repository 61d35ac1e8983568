"""Command line: `python -m fastgan info` (what is built and available here, and why the rest is
not) and `python -m fastgan bench` (the benchmark; see fastgan/benchmark)."""
import argparse
import platform
import sys


def info() -> int:
    import torch

    import fastgan
    from fastgan.backend import available_backends

    print(f"fastgan {fastgan.__version__}")
    print(f"python  {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"torch   {torch.__version__} (CUDA {torch.version.cuda or 'none'}; {torch.get_num_threads()} CPU threads)")
    try:
        import triton

        print(f"triton  {triton.__version__}")
    except Exception as exc:  # not installed, or broken
        print(f"triton  not available ({type(exc).__name__}: {exc})")
    ext = fastgan.extension_info()
    print(f"extension fastgan._C: {'loaded via ' + ext['how'] if ext['loaded'] else 'NOT loaded: ' + str(ext['error'])}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
        print(f"GPU     {torch.cuda.get_device_name(0)}")
    else:
        print("GPU     none (torch.cuda.is_available() is False)")
    for device in devices:
        print(f"\nbackends for {device.type} tensors:")
        for name, reason in available_backends(device).items():
            print(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
        from fastgan.backend import resolve_backend

        print(f"  auto    -> {resolve_backend('auto', device)}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["selftest"]: return __import__("fastgan.selftest", fromlist=["main"]).main(argv[1:])  # noqa: E701
    if argv[:1] == ["bench"]:
        from fastgan.benchmark.cli import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="fastgan", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, and which backends are built and available here")
    sub.add_parser("bench", help="benchmark every op on every available path (python -m fastgan bench -h)")
    parser.parse_args(argv)
    return info()


if __name__ == "__main__":
    sys.exit(main())
