"""Keep TensorFlow's own chatter out of the user's output, and nothing else.

Two sources, each silenced where it arises and only there:

* TF's C++ start-up lines ("This TensorFlow binary is optimized ...", "All log
  messages before absl::InitializeLog() ...") are INFO messages printed when
  TensorFlow is imported.  ``quiet_tf_startup`` sets ``TF_CPP_MIN_LOG_LEVEL=1``
  (drop INFO, keep TF's warnings and errors) *if the user has not set it*; it runs
  when this front end is imported, which is before tf-pond imports TensorFlow.
* TF's Python warning "N out of the last M calls to <function> triggered
  tf.function retracing" appears when *this library* calls Keras repeatedly on
  fresh copies of a model (federated clients' local ``fit``, the demo).  Those
  retracings are by design, and the user can do nothing about them, so
  ``no_retracing_warnings`` filters that one message from the ``tensorflow``
  logger for the duration of our own calls.  The logger's level is untouched:
  the user's own calls, and every other TF warning, still print.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

#: the message TF logs when a tf.function traces too often (tensorflow/python/eager/polymorphic_function)
RETRACING = "triggered tf.function retracing"


def quiet_tf_startup(environ: MutableMapping[str, str] = os.environ) -> None:
    """Drop TF's C++ INFO lines at import, unless the user chose a level (TF_CPP_MIN_LOG_LEVEL)."""
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")


class _RetracingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return RETRACING not in record.getMessage()


@contextmanager
def no_retracing_warnings() -> Iterator[None]:
    """Hide TF's retracing warning from the calls made inside (our own calls to Keras)."""
    logger = logging.getLogger("tensorflow")  # does not import TensorFlow
    quiet = _RetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
