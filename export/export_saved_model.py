#!/usr/bin/env python
"""Export a trained esr_tf model as a TF Serving SavedModel (same as `esr-tf export`).

    python export/export_saved_model.py --model esr_out/model.keras --base serving_models \
        --name esr --version 1

Writes <base>/<name>/<version>/ atomically, with warm-up requests, then verifies it.
"""

import argparse
import sys

from esr_tf.cli import add_export_args, cmd_export

if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_export_args(parser)
    sys.exit(cmd_export(parser.parse_args()))
