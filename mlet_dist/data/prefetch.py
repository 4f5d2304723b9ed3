"""Run an iterator in a background thread, a bounded number of items ahead.

Parquet decoding and numpy/torch conversion release the GIL, so one thread overlaps reading the
next batches with the current training step. An exception in the thread reaches the consumer at
the item where it happened (with its traceback), never a silent stop; a consumer that stops
early (early stopping, max batches) stops the thread too.
"""

import queue
import threading
from typing import Callable, Iterator, TypeVar, cast

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def prefetch(make: Callable[[], Iterator[T]], depth: int, transform: Callable[[T], T] = lambda x: x) -> Iterator[T]:
    """Items of ``make()`` (each passed through ``transform`` in the thread), ``depth`` ahead.
    ``depth`` 0: no thread at all (the plain, synchronous iterator)."""
    if depth <= 0:
        for item in make():
            yield transform(item)
        return
    items: "queue.Queue[object]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in make():
                if not put(transform(item)):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failure(err))
            return
        put(_DONE)

    thread = threading.Thread(target=work, name="mlet-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            queued = items.get()
            if queued is _DONE:
                return
            if isinstance(queued, _Failure):
                raise queued.err
            yield cast(T, queued)
    finally:
        stop.set()
        thread.join(timeout=10)
