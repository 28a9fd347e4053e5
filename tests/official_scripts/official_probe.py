"""Run by the official SDK's venv interpreter: prints its versions as one JSON line.

``--version-only`` just imports sora_sdk (is the venv usable?); without it the
probe also builds a `Sora` and reads the codec capability.
"""
import json
import platform
import sys


def main() -> int:
    import numpy
    import sora_sdk

    out = {"version": sora_sdk.__version__, "numpy": numpy.__version__,
           "python": platform.python_version(), "implementation": platform.python_implementation()}
    if "--version-only" not in sys.argv:
        capability = sora_sdk.get_video_codec_capability()
        out["codecs"] = [
            {"engine": str(engine.name), "type": str(codec.type), "encoder": codec.encoder, "decoder": codec.decoder}
            for engine in capability.engines for codec in engine.codecs]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
