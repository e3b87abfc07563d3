"""``python -m faseg.service [--model X.onnx] [--port P] ...``"""

import sys

from .cli import main

sys.exit(main())
