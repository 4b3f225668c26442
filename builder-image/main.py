"""FLOps' SLA starts the image builder as `python3 main.py <arguments>` in the image's working
directory. The builder is a single binary: this hands the arguments over to it unchanged."""

import os
import sys

BUILDER = "/usr/local/bin/flops-image-builder"

if __name__ == "__main__":
    os.execv(BUILDER, [BUILDER, *sys.argv[1:]])
