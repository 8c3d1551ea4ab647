"""Entry point: ``python -m aviary.serving --model_config_file=... --rest_api_port=8501``."""

import sys

from aviary.serving.server import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
