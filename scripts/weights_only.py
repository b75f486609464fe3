"""Drop a training checkpoint's optimizer, scheduler and RNG state: the weights and metadata that
``safire calibrate``, ``safire evaluate`` and the backend read (a third of the size).

    python scripts/weights_only.py RUN/last.pt RUN/model.pt
"""

import sys

import torch


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    ck = torch.load(argv[0], map_location="cpu", weights_only=True)
    ck.pop("train_state", None)
    torch.save(ck, argv[1])
    print("weights:", argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
