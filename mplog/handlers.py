"""The three handler classes users see: subclasses of the stdlib ones they know.

- :class:`QueueHandler` (any process): hands each record to the listener, synchronously.
- :class:`QueueListener` (listener process): passes records to the real handlers.
- :class:`SocketHandler` (listener process, or anywhere): the stdlib ``SocketHandler``'s
  arguments and wire format, with one sender thread, an in-order buffer and a back-off
  timer, so it never drops a record because it is backing off.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import pickle
import socket
import ssl
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

from ._backoff import Backoff
from ._buffer import OVERFLOW_POLICIES, DropReport, FrameBuffer
from ._errors import ConfigError
from ._framing import HEADER
from ._intake import IntakeClient
from ._limits import PICKLE_FRAME, fit
from ._options import check_socket_options, load_key
from ._record import (
    STANDARD_ATTRS,
    encode,
    encode_pickle,
    make_record,
    pickle_levelno,
    prepare_dict,
)
from ._sender import Sender, drop_record
from ._spool import SpooledBuffer
from ._stderr import say
from ._text import safe_repr
from ._tls import client_tls
from ._wires import make_wire

__all__ = ["ENV_ADDRESS", "QueueHandler", "QueueListener", "SocketHandler"]

#: The environment variable through which child processes find the listener.
ENV_ADDRESS = "MPLOG_ADDRESS"



def _handle_unlocked(handler: logging.Handler, record: logging.LogRecord) -> Any:
    """``Handler.handle`` without the handler lock (for handlers that lock what they own)."""
    if not handler.filters:
        handler.emit(record)
        return record
    rv = handler.filter(record)
    if isinstance(rv, logging.LogRecord):
        record = rv
    if rv:
        handler.emit(record)
    return rv


def resolve_address(address: str | None) -> str:
    """*address*, else ``$MPLOG_ADDRESS``; :class:`ConfigError` naming both if neither."""
    if address:
        return str(address)
    env = os.environ.get(ENV_ADDRESS)
    if env:
        return env
    raise ConfigError(
        f"no mplog address: pass address= (Pipeline.address) or set the {ENV_ADDRESS} "
        "environment variable"
    )


class QueueHandler(logging.handlers.QueueHandler):
    """Send every record to the mplog listener at *address* (default ``$MPLOG_ADDRESS``).

    ``emit`` encodes the record (data-only, see :func:`prepare`) and writes it to this
    process's connection to the listener before it returns; there is no thread and no
    queue in this process. Thread-safe and fork-safe. It never raises into the caller and
    blocks at most ~2 s: a listener being restarted for longer than that gets the record
    held in this process's memory (up to 16 MiB) and written once it is back; a pipeline
    that is gone gets it written to stderr instead, counted, and reported to the listener
    if it comes back.
    """

    queue: IntakeClient  # type: ignore[assignment]
    #: True when ``prepare`` and ``enqueue`` are this class's own (see __init_subclass__).
    _plain = True
    #: ... and ``emit`` too: ``handle`` then encodes and sends in one step.
    _lean = True

    def __init__(self, *args: Any, address: str | None = None, level: int = logging.NOTSET) -> None:
        """``QueueHandler(address=None, level=NOTSET)``, positional or by keyword.

        Also usable as ``"class": "mplog.QueueHandler"`` in ``logging.config.dictConfig``:
        from Python 3.12 on, dictConfig passes every QueueHandler subclass a queue of its
        own as the first argument; mplog has no use for it and ignores it.
        """
        if len(args) > 2:
            raise TypeError(f"QueueHandler takes at most 2 positional arguments, got {len(args)}")
        if args:
            first = args[0]
            if first is None or isinstance(first, str | os.PathLike):
                if address is not None:
                    raise TypeError("QueueHandler got address twice")
                address = None if first is None else os.fspath(first)
            elif not (hasattr(first, "put_nowait") and hasattr(first, "get")):
                raise ConfigError(f"QueueHandler address must be a str path, got {first!r}")
            if len(args) == 2:
                level = args[1]
        logging.Handler.__init__(self, level)
        self.address = resolve_address(address)
        self.queue = IntakeClient(self.address)
        self.queue.check()  # ConfigError now, not a stall at the first log call
        self.listener = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Return a copy of *record* as the listener will see it; *record* is unchanged.

        ``msg`` and ``message`` hold the merged message, ``args`` and ``exc_info`` are
        None, ``exc_text`` holds the formatted traceback, ``stack_info`` its text, and
        each extra is kept if JSON can represent it, else replaced by its ``repr()``.
        """
        return make_record(prepare_dict(record))

    def enqueue(self, record: logging.LogRecord) -> None:
        """Write *record* (as :meth:`prepare` made it) to the listener."""
        self.queue.send(encode(record))

    def emit(self, record: logging.LogRecord) -> None:
        """``enqueue(prepare(record))``, as the stdlib does; when the class overrides
        neither hook, the same in one step (the encoder reads *record* without copying)."""
        try:
            if type(self)._plain:
                q = self.queue
                q.send(encode_pickle(record) if q.relay else encode(record), record.process)
            else:
                self.enqueue(self.prepare(record))
        except Exception:
            self.handleError(record)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Decided once per class, not per record: the fast path is only for classes that
        # keep both hooks of the stdlib chain as they are here.
        cls._plain = cls.prepare is QueueHandler.prepare and cls.enqueue is QueueHandler.enqueue
        cls._lean = cls._plain and cls.emit is QueueHandler.emit

    def handle(self, record: logging.LogRecord) -> Any:
        # No handler lock: the intake connection has its own, held only for the write.
        if not self.filters and type(self)._lean:
            # The common shape, in one call: no filter, no overridden emit or hooks.
            try:
                q = self.queue
                q.send(encode_pickle(record) if q.relay else encode(record), record.process)
            except Exception:
                self.handleError(record)
            return record
        return _handle_unlocked(self, record)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait (at most *timeout* s) until the listener has handled every record this
        process wrote (``logging.shutdown`` calls it at exit)."""
        self.queue.drain(timeout)

    def close(self) -> None:
        self.queue.close()
        logging.Handler.close(self)


#: The least time between two lines about the same failing handler (after its first).
FAILURE_REPORT_INTERVAL = 60.0


class HandlerFailures:
    """The failures of the listener's handlers: an ``emit`` that called ``handleError``
    (a full disk under a ``FileHandler``, an unreachable mail server), a raising filter
    or ``emit``, a raising ``flush``. Each is counted (a record's in ``dropped`` too: it
    did not reach that handler's destination) and said on stderr: with its traceback the
    first time per handler, then at most once per FAILURE_REPORT_INTERVAL, with how many
    more. The stdlib's ``handleError`` wrote a traceback per record: 37 lines each, at
    the listener's rate."""

    def __init__(self) -> None:
        self.errors = 0
        #: Records a handler failed on (counted in ``dropped``).
        self.lost = 0
        #: id(handler) -> [when said last, failures since].
        self._said: dict[int, list[float]] = {}

    def watch(self, handler: logging.Handler) -> None:
        """Route *handler*'s ``handleError`` here (an instance attribute: the class's
        method is left alone, and so is every handler of the program's own process)."""

        def handle_error(record: logging.LogRecord) -> None:
            self.failed(handler, sys.exc_info()[1])

        handler.handleError = handle_error  # type: ignore[method-assign]

    def failed(self, handler: logging.Handler, exc: BaseException | None,
               *, record: bool = True, what: str = "failed on a record") -> None:
        """Count a failure of *handler* (a record it lost, if *record*) and report it."""
        self.errors += 1
        if record:
            self.lost += 1
        self.report(handler, exc, what, " (counted in dropped)" if record else "")

    def report(self, who: object, exc: BaseException | None, what: str, note: str = "") -> None:
        """Say that *who* (a handler, or the listener for a whole batch) *what*, because
        of *exc*, and *note*: with the traceback the first time, then at most once per
        FAILURE_REPORT_INTERVAL."""
        now = time.monotonic()
        said = self._said.get(id(who))
        why = f"{type(exc).__name__}: {exc}" if exc is not None else "(no exception)"
        if said is None:
            self._said[id(who)] = [now, 0]
            tb = "".join(traceback.format_exception(exc)).rstrip() if exc is not None else ""
            say(f"mplog listener: {who!r} {what}: {why}{note}; its further failures are "
                f"counted and said at most once a minute\n{tb}")
            return
        said[1] += 1
        if now - said[0] >= FAILURE_REPORT_INTERVAL:
            say(f"mplog listener: {who!r} failed {int(said[1])} more times in "
                f"{now - said[0]:.0f} s; the last: {why}")
            said[0], said[1] = now, 0


class QueueListener(logging.handlers.QueueListener):
    """The listener side: pass records to *handlers*.

    Inside the mplog listener process, records arrive from the intake server through
    :meth:`handle`; ``queue`` may be None and no thread is started. Given a queue, it
    behaves as the stdlib class. ``respect_handler_level`` defaults to True here.
    """

    def __init__(
        self, queue: Any, *handlers: logging.Handler, respect_handler_level: bool = True
    ) -> None:
        super().__init__(queue, *handlers, respect_handler_level=respect_handler_level)
        #: Records passed to the handlers.
        self.handled = 0
        #: Handler calls that raised (and, in the listener process, handleError calls).
        self.failures = HandlerFailures()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {', '.join(map(repr, self.handlers)) or 'no handlers'}>"

    @property
    def errors(self) -> int:
        """Handler calls that failed (see :class:`HandlerFailures`)."""
        return self.failures.errors

    def start(self) -> None:
        for h in self.handlers:
            if isinstance(h, SocketHandler):
                h.start()
        if self.queue is not None:
            super().start()

    def stop(self) -> None:
        if self.queue is not None and getattr(self, "_thread", None) is not None:
            super().stop()

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The stdlib hook: records arrive already prepared by the worker's QueueHandler."""
        return record

    def handle(self, record: logging.LogRecord) -> None:
        """Pass ``prepare(record)`` to every handler (respecting handler levels)."""
        record = self.prepare(record)
        respect = self.respect_handler_level
        for handler in self.handlers:
            if not respect or record.levelno >= handler.level:
                handler.handle(record)
        self.handled += 1

    def relay_batch(self, frames: list[bytes]) -> None:
        """Relay mode (the intake chose it: the one handler is a plain
        :class:`SocketHandler` on the stdlib wire): pass stdlib-wire *frames*, made by the
        workers' :func:`~mplog._record.encode_pickle`, to that handler as they are."""
        h = self.handlers[0]
        assert isinstance(h, SocketHandler)
        h._relay(frames, self.respect_handler_level)
        self.handled += len(frames)

    def handle_batch(self, batch: list[dict[str, Any]]) -> None:
        """Handle records given as ``__dict__``s (what the intake decodes), in order.

        A plain :class:`SocketHandler` (no filters, no overridden hooks) takes the whole
        batch at once, straight from the dicts; every other handler gets a ``LogRecord``
        per record through ``handle()``, as with the stdlib listener.
        """
        cls = type(self)
        if cls.handle is not QueueListener.handle:  # a user's override: the stdlib chain
            for d in batch:
                self.handle(make_record(d))
            return
        fast = [h for h in self.handlers if isinstance(h, SocketHandler) and h._batchable()]
        if cls.prepare is not QueueListener.prepare:
            fast = []
        slow = [h for h in self.handlers if h not in fast]
        for fh in fast:
            fh._emit_dicts(batch, self.respect_handler_level)
        if slow:
            respect = self.respect_handler_level
            for d in batch:
                record = self.prepare(make_record(d))
                for handler in slow:
                    if not respect or record.levelno >= handler.level:
                        try:
                            handler.handle(record)
                        except Exception as exc:  # e.g. a raising filter: count, go on
                            self.failures.failed(handler, exc)
        self.handled += len(batch)


class SocketHandler(logging.handlers.SocketHandler):
    """A drop-in for :class:`logging.handlers.SocketHandler` that does not lose records.

    Same arguments (``port=None``: *host* is a Unix socket path), same default wire (4-byte
    big-endian length + pickled record dict, protocol 1), same ``retryStart`` (1.0),
    ``retryFactor`` (2.0) and ``retryMax`` (30.0) attributes. Unlike the stdlib class,
    ``emit`` only appends to an in-order buffer; one sender thread owns the connection,
    retries on its back-off timer (plus *jitter*), and writes many records per syscall.

    Options:
        wire: ``"pickle"`` (the stdlib format, default), ``"syslog"`` or ``"jsonl"``; other
            keyword arguments are that wire's options (see ``docs/destinations.md``).
        buffer_records, buffer_bytes: bounds of the in-memory buffer.
        overflow: ``"drop_oldest"`` (default), ``"drop_newest"`` or ``"block"``; every
            drop is counted and announced by a WARNING record once connected.
        block_timeout: seconds ``emit`` waits for room under ``"block"`` before dropping.
        close_timeout: seconds ``close()`` spends delivering what is buffered.
        spool_dir: a directory for the disk spool (default None: memory only). Records
            wait there, in order, when memory is full (``spool_mode="overflow"``) or
            always (``"all"``: they survive a listener crash); what is left at close is
            sent by the next handler that opens the same directory.
        spool_max_bytes: bound of the spool's files (default 256 MiB); beyond it, and
            when the disk is full, the overflow policy applies and counts.
        spool_mode: ``"overflow"`` (default) or ``"all"``.
        jitter: fraction by which each back-off delay is randomly spread.
        ssl_context, tls_ca_file, tls_cert_file, tls_key_file, tls_server_name: TLS, for
            every wire (any of them turns it on; TCP only). The server's certificate is
            verified against ``tls_ca_file`` (else the system's CAs) and its name against
            ``tls_server_name`` (default: *host*); ``tls_cert_file``/``tls_key_file`` are
            the client certificate for mutual TLS. ``ssl_context`` replaces the files;
            an ``SSLContext`` cannot be shipped to the listener process, so such a
            handler must be built there (a handlers factory). See ``docs/tls.md``.
            A failed handshake is a failed connection: records wait, ``last_error``
            says why, the back-off timer decides the next try.

    The sender thread starts with :meth:`start` (the mplog listener calls it), or at the
    first ``emit`` when the handler is used on its own.
    """

    def __init__(
        self,
        host: str,
        port: int | None,
        *,
        wire: str = "pickle",
        buffer_records: int = 100_000,
        buffer_bytes: int = 64 * 1024 * 1024,
        overflow: str = "drop_oldest",
        block_timeout: float = 5.0,
        close_timeout: float = 5.0,
        jitter: float = 0.1,
        spool_dir: str | os.PathLike[str] | None = None,
        spool_max_bytes: int = 256 * 1024 * 1024,
        spool_mode: str = "overflow",
        ssl_context: ssl.SSLContext | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        **wire_options: Any,
    ) -> None:
        check_socket_options(
            host, port, buffer_records=buffer_records, buffer_bytes=buffer_bytes,
            overflow=overflow, block_timeout=block_timeout, close_timeout=close_timeout,
            jitter=jitter, spool_dir=spool_dir, spool_max_bytes=spool_max_bytes,
            spool_mode=spool_mode,
        )
        self._wire = make_wire(wire, _resolve_files(wire, wire_options))
        #: The largest frame (or buffered payload) this wire may carry: bigger records
        #: are cut to fit, or dropped and counted (``mplog._limits``).
        self._limit: int = getattr(self._wire, "max_payload", PICKLE_FRAME)
        if port is not None and not isinstance(port, int):
            raise ConfigError(f"port must be an int or None, got {port!r}")
        tls_options = {
            k: v for k, v in (
                ("ssl_context", ssl_context), ("tls_ca_file", tls_ca_file),
                ("tls_cert_file", tls_cert_file), ("tls_key_file", tls_key_file),
                ("tls_server_name", tls_server_name),
            ) if v is not None
        }
        self._tls = client_tls(host, port, tls_options)
        if overflow not in OVERFLOW_POLICIES:
            raise ConfigError(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}; got {overflow!r}"
            )
        super().__init__(host, port)
        self.wire = wire
        #: Records larger than the wire carries (cut to fit, or dropped and counted).
        self.too_large = 0
        # Encoding and buffering happen in one step under this lock, so records enter
        # the buffer in the order a numbering wire (``wire="mplog"``) numbered them.
        self._order = threading.Lock()
        self.jitter = jitter
        self.close_timeout = close_timeout
        self._options = {
            "wire": wire,
            "buffer_records": buffer_records,
            "buffer_bytes": buffer_bytes,
            "overflow": overflow,
            "block_timeout": block_timeout,
            "close_timeout": close_timeout,
            "jitter": jitter,
            **tls_options,
            **wire_options,
        }
        buffer: FrameBuffer
        if spool_dir is not None:
            buffer = SpooledBuffer(
                buffer_records, buffer_bytes, overflow, spool_dir=spool_dir,
                spool_max_bytes=spool_max_bytes, spool_mode=spool_mode,
            )
            self._options.update(
                spool_dir=os.fspath(spool_dir), spool_max_bytes=spool_max_bytes,
                spool_mode=spool_mode,
            )
        else:
            buffer = FrameBuffer(buffer_records, buffer_bytes, overflow)
        Backoff(self.retryStart, self.retryFactor, self.retryMax, jitter)  # validate
        self._sender = Sender(
            (f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}")
            if port is not None else host,
            buffer,
            self._connect,
            self._backoff,
            self._drop_payload,
            block_timeout=block_timeout,
            acked=self._wire if hasattr(self._wire, "new_session") else None,  # type: ignore[arg-type]
        )

    # Handlers are shipped to the listener process by pickling; locks, threads and
    # sockets are rebuilt there rather than copied.
    def __reduce__(self) -> Any:
        if self._tls is not None and not self._tls.built:
            raise ConfigError(
                f"SocketHandler({self.host!r}, {self.port}, ssl_context=...): an SSLContext "
                "does not pickle; build this handler in a handlers factory, or use the "
                "tls_*_file options"
            )
        keep = ("level", "formatter", "filters", "_name", "retryStart", "retryFactor",
                "retryMax", "closeOnError")
        state = {k: self.__dict__[k] for k in keep if k in self.__dict__}
        return (_rebuild_socket_handler, (self.host, self.port, self._options, state))

    def _backoff(self) -> Backoff:
        return Backoff(self.retryStart, self.retryFactor, self.retryMax, self.jitter)

    def _connect(self) -> socket.socket:
        sock = self.makeSocket()
        if self._tls is not None:
            # The handshake (bounded by its own timeout) is part of connecting: a failure
            # is a TLSError (an OSError) that the sender counts like a refused connection.
            sock = self._tls.wrap(sock, f"{self.host}:{self.port}")
        return sock

    def _drop_payload(self, report: DropReport, head: bytes | None) -> bytes | None:
        record = drop_record(report, self._sender.name, self._sender.buffer.overflow)
        wire = self._wire
        if wire is None:
            return self.makePickle(record)
        placed = getattr(wire, "report_payload", None)
        if placed is not None:
            # A wire that numbers records numbers the report to fit before *head*.
            return placed(prepare_dict(record), head)  # type: ignore[no-any-return]
        return wire.encode(prepare_dict(record))

    def _fit(self, d: dict[str, Any], encode: Any) -> bytes | None:
        """*d* encoded in at most ``self._limit`` bytes (cut if needed), else None after
        counting it as dropped with the reason in ``last_error``."""
        frame: bytes = encode(d)
        if len(frame) <= self._limit:
            return frame
        self.too_large += 1
        cut = fit(d, encode, self._limit, STANDARD_ATTRS)
        if cut is None:
            self._sender.count_drop(
                f"a record of {len(frame)} bytes does not fit wire={self.wire!r} "
                f"(limit {self._limit}) even cut down, and was dropped"
            )
        return cut

    def _encode_dict(self, d: dict[str, Any]) -> bytes:
        if self._wire is None:
            s = pickle.dumps(d, 1)
            return HEADER.pack(len(s)) + s
        return self._wire.encode(d)

    def _encode(self, record: logging.LogRecord) -> bytes | None:
        if self._wire is None:
            frame = self.makePickle(record)
            if len(frame) - 4 <= self._limit:
                return frame
            return self._fit(_pickle_dict(record), self._encode_dict)
        if record.args is None and record.exc_info is None:
            d = record.__dict__  # already prepared by the pipeline
        else:
            d = prepare_dict(record)
        return self._fit(d, self._wire.encode)

    def start(self) -> None:
        """Open the spool, if any, and start the sender thread (idempotent).

        Raises:
            ConfigError: the spool directory cannot be used (in use, not writable).
        """
        buffer = self._sender.buffer
        if isinstance(buffer, SpooledBuffer) and buffer.spool is None:
            spool = buffer.open()
            resume = getattr(self._wire, "resume", None)
            if resume is not None:
                # Same sender id and ever-growing sequence numbers across restarts, so
                # the receiver de-duplicates what the spool replays.
                resume(spool.sender_id, spool.epoch)
        self._sender.start()

    def _batchable(self) -> bool:
        return not self.filters and type(self)._plain

    #: True when the class keeps the stdlib hooks (``emit``, ``handle``, ``makePickle``,
    #: ``send``) as they are here; decided once per class by __init_subclass__.
    _plain = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._plain = all(
            getattr(cls, name) is getattr(SocketHandler, name)
            for name in ("emit", "handle", "makePickle", "send")
        )

    def _emit_dicts(self, batch: list[dict[str, Any]], respect_level: bool) -> None:
        # The dicts are what makePickle would build from their records: msg merged,
        # args and exc_info None, exc_text set, no "message" key.
        if not self._sender.started:
            self.start()  # before encoding: opening a spool may renumber the wire
        level = self.level if respect_level else logging.NOTSET
        dumps = pickle.dumps
        pack = HEADER.pack
        limit = self._limit
        frames = []
        wire = self._wire
        with self._order:
            for d in batch:
                if d["levelno"] >= level:
                    if wire is None:
                        s = dumps(d, 1)
                        frame: bytes | None = pack(len(s)) + s
                        if len(s) > limit:
                            frame = self._fit(d, self._encode_dict)
                    else:
                        frame = wire.encode(d)
                        if len(frame) > limit:
                            frame = self._fit(d, wire.encode)
                    if frame is not None:
                        frames.append(frame)
            self._sender.submit_many(frames)

    def _relay(self, frames: list[bytes], respect_level: bool) -> None:
        # Frames a worker made for this wire (levelno at a fixed offset); each fits: the
        # intake's limit is below the wire's (mplog._limits).
        if not self._sender.started:
            self.start()
        if respect_level and self.level > logging.NOTSET:
            level = self.level
            frames = [f for f in frames if pickle_levelno(f) >= level]
        with self._order:
            self._sender.submit_many(frames)

    def makePickle(self, record: logging.LogRecord) -> bytes:
        """The bytes of one frame for *record* on this handler's wire (for the default
        wire, the stdlib format), without modifying *record*. Overriding it (the stdlib
        hook) changes what every record becomes; ``send`` then buffers the result."""
        if self._wire is not None:
            return self._encode(record) or b""
        d = _pickle_dict(record)
        try:
            s = pickle.dumps(d, 1)
        except Exception:  # an unpicklable extra: ship its repr instead of losing the record
            s = pickle.dumps({k: _picklable(v) for k, v in d.items()}, 1)
        return HEADER.pack(len(s)) + s

    def emit(self, record: logging.LogRecord) -> None:
        if not self._sender.started:
            try:
                self.start()  # before encoding: opening a spool may renumber the wire
            except ConfigError:
                # Used on its own (not in the listener, which starts it first) with a
                # spool it cannot open: the record is counted, and the error reported.
                self._sender.buffer.drop(time.time())
                self.handleError(record)
                return
        with self._order:
            try:
                if type(self)._plain:
                    frame = self._encode(record)
                    if frame is not None:
                        self._sender.submit(frame)
                else:  # the stdlib chain, for a subclass that overrides a hook
                    self.send(self.makePickle(record))
            except Exception:
                self.handleError(record)

    def handle(self, record: logging.LogRecord) -> Any:
        # No handler lock: the sender's buffer has its own.
        return _handle_unlocked(self, record)

    def send(self, s: ReadableBuffer) -> None:
        """Queue already-framed bytes *s* for sending (stdlib hook; never drops)."""
        if s:
            self._sender.submit(bytes(s))

    def flush(self, timeout: float | None = None) -> None:
        """Wait until everything buffered was written (at most *timeout*, default 5 s)."""
        if self._sender.started:
            self._sender.wait_idle(self.close_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Deliver what is buffered within ``close_timeout``; count anything left."""
        self._sender.close(self.close_timeout)
        logging.Handler.close(self)

    @property
    def retryTime(self) -> float | None:
        return self._sender.retry_time

    @retryTime.setter
    def retryTime(self, value: float | None) -> None:
        # The stdlib sets this in __init__; our schedule lives in the sender.
        if "_sender" in self.__dict__:
            self._sender.retry_time = value

    def idle(self) -> bool:
        return self._sender.idle()

    def flush_mark(self) -> int:
        """A mark for :meth:`flushed`: the number of records buffered so far, ever."""
        with self._sender._cond:
            return self._sender.buffer.pushed

    def flushed(self, mark: int) -> bool:
        """True once every record buffered before :meth:`flush_mark` returned *mark* has
        left the buffer (sent, acknowledged where the wire acknowledges, or dropped).
        Unlike waiting for an empty buffer, this finishes under a steady stream."""
        with self._sender._cond:
            return self._sender.buffer.removed >= mark

    def stats(self, locked: bool = True) -> dict[str, int]:
        """The sender's counters. *locked* False reads them without taking the sender's
        lock (the listener's per-turn publish must never wait for the sender thread);
        each value is then read atomically, the set of them a few microseconds apart."""
        if not locked:
            return self._stats()
        with self._sender._cond:
            return self._stats()

    def _stats(self) -> dict[str, int]:
        s = self._sender
        return {
            "sent": s.sent,
            "buffered": len(s.buffer),
            "buffered_bytes": s.buffer.nbytes,
            "dropped": s.buffer.dropped,
            "reconnects": s.reconnects,
            "connected": int(s.connected),
            "drop_reports": s.reports_sent,
            "too_large": self.too_large,
            "sender_restarts": s.thread_restarts,
            "poisoned": s.poisoned,
            **s.buffer.spool_stats(),
        }

    def last_error(self) -> tuple[str | None, float | None]:
        """The latest delivery error (one line) and its wall-clock time, or (None, None)."""
        s = self._sender
        return s.last_error, s.last_error_at


def _resolve_files(wire: str, options: dict[str, Any]) -> dict[str, Any]:
    """*options* with the ones that name files read now (``ConfigError`` if they cannot be):
    the mplog wire's ``hmac_key_file`` (or ``$MPLOG_HMAC_KEY``) becomes ``hmac_key``."""
    if wire != "mplog":
        return options
    out = dict(options)
    out["hmac_key"] = load_key(out.pop("hmac_key", None), out.pop("hmac_key_file", None))
    return out


def _pickle_dict(record: logging.LogRecord) -> dict[str, Any]:
    """What the stdlib ``makePickle`` pickles, without modifying *record*."""
    d = dict(record.__dict__)
    if record.exc_info and not record.exc_text:
        d["exc_text"] = logging.Formatter().formatException(record.exc_info)
    d["msg"] = record.getMessage()
    d["args"] = None
    d["exc_info"] = None
    d.pop("message", None)
    return d


def _picklable(value: object) -> object:
    try:
        pickle.dumps(value, 1)
    except Exception:
        return safe_repr(value)
    return value


def _rebuild_socket_handler(
    host: str, port: int | None, options: dict[str, Any], state: dict[str, Any]
) -> SocketHandler:
    h = SocketHandler(host, port, **options)
    # Carry over what users may have set: level, formatter, filters, retry attributes.
    h.setLevel(state.get("level", logging.NOTSET))
    h.formatter = state.get("formatter")
    h.filters = list(state.get("filters", []))
    h.name = state.get("_name")
    for attr in ("retryStart", "retryFactor", "retryMax", "closeOnError"):
        if attr in state:
            setattr(h, attr, state[attr])
    return h

