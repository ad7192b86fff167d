"""tunesmith: from a pile of examples to a fine-tuned LLM you can trust."""

import logging

__version__ = "0.1.0"

# bitsandbytes' CPU backend warns, when it is first imported (peft imports it), that it could not
# fetch an optional kernel from the hub; QLoRA runs without it, so the warning is only noise in
# every `tunesmith train`. Set here, before any tunesmith module can import peft, library use included.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
