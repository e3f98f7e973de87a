"""Ship a run's trained weights: python scripts/export_pretrained.py <run>/checkpoints/<file>.ckpt
writes pretrained/<experiment>.pt (float32 weights, the identity record, the model's config; no
optimizer state), which eval.py pretrained=<experiment> and dfn.pretrained(...) read."""

import argparse

from dfn.run.checkpoints import read_checkpoint
from dfn.run.cli import reporting_user_errors
from dfn.run.pretrained import export

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="<run>/checkpoints/<file>.ckpt")
    parser.add_argument("--out", help="default: pretrained/<experiment>.pt")
    args = parser.parse_args()
    with reporting_user_errors():
        out = export(args.checkpoint, args.out)
        step = read_checkpoint(out)["global_step"]
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, step {step})")
