"""presidio-analyzer, imported without torch and transformers.

presidio imports both at import time (~15 s on this machine, in every worker process) for its
Hugging Face recognizers, which we never use; each does `try: import torch / except ImportError`.
Hiding the two modules while presidio is imported makes those imports fail fast; they are restored
right after, so the rest of the process imports them normally.
"""

import sys

_hidden = [name for name in ("torch", "transformers") if name not in sys.modules]
for _name in _hidden:
    sys.modules[_name] = None  # type: ignore[assignment]
try:
    from presidio_analyzer import (
        AnalyzerEngine,
        EntityRecognizer,
        Pattern,
        PatternRecognizer,
        RecognizerRegistry,
        RecognizerResult,
    )
    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer
    from presidio_analyzer.nlp_engine import NerModelConfiguration, NlpArtifacts, SpacyNlpEngine
    from presidio_analyzer.predefined_recognizers import SpacyRecognizer
finally:
    for _name in _hidden:
        if sys.modules.get(_name, 0) is None:
            del sys.modules[_name]

__all__ = ["AnalyzerEngine", "ContextAwareEnhancer", "EntityRecognizer", "NerModelConfiguration", "NlpArtifacts",
           "Pattern", "PatternRecognizer", "RecognizerRegistry", "RecognizerResult", "SpacyNlpEngine",
           "SpacyRecognizer"]
