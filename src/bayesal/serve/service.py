"""The labeling service behind the web app: one :class:`~bayesal.labeling.session.Session`, many clients.

Every call takes one lock, so answers from several tabs or people are applied one at a time, in the
order they arrive, each durably logged by the session before it is acknowledged. A client (a browser
tab, identified by a random id it sends) holds a *lease* on the item it is shown: while the lease is
fresh, other clients are given the next best item instead, so two people rarely see the same one.
When it still happens (an expired lease, ``lease_seconds=0``, an undo elsewhere), the second answer
for an item finds it already labeled and gets :class:`~bayesal.exceptions.StaleAnswerError` — it is
not recorded, and nothing recorded before is touched.

The item a client sees next is computed right after its answer is absorbed (Bayesian update, then the
strategy's pick under the updated posterior) and returned in the same response; the live panel
(stopping signals, class counts, learning curve) is computed once per state, on request, and cached.
"""

from __future__ import annotations

import io
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError, StaleAnswerError
from bayesal.labeling import Session, format_labels, label_rows, stop_fields, stop_summary

from .guess import model_guess
from .render import item_view, line_plot_svg
from .speculation import NextPickSpeculator
from .thumbs import NotFoundError, thumbnails_of

__all__ = ["LabelingService", "shortcut_keys"]

_KEYS = "123456789" + "abcdefghijklmnopqrstuvwxyz"
_RESERVED_KEYS = set("suyz")  # skip, undo (u / ctrl-z), redo (y / ctrl-y) are not class shortcuts
_CLIENT_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_LEASES = 1024
#: Longest wait of an answer, outside the lock, for the speculation of its own next pick to finish.
SETTLE_SECONDS = 30.0


def shortcut_keys(class_names: list[str]) -> list[str | None]:
    """Keyboard shortcut of each class.

    Classes named by single distinct keys (digits ``0``–``9``, letters other than the command keys
    ``s``, ``u``, ``y``) keep their own name as the key; otherwise ``1``–``9``, then letters. Classes
    beyond the available keys have no shortcut (their button still works).
    """
    own = [n.lower() for n in class_names]
    if all(len(k) == 1 and (k.isdigit() or "a" <= k <= "z") and k not in _RESERVED_KEYS for k in own) and len(
        set(own)
    ) == len(own):
        return list(own)
    keys = [k for k in _KEYS if k not in _RESERVED_KEYS]
    return [keys[c] if c < len(keys) else None for c in range(len(class_names))]


class LabelingService:
    """Thread-safe labeling service over a :class:`Session` (the web app's model layer).

    Parameters
    ----------
    session:
        An open session (new, resumed or recovered); the service closes it in :meth:`close`.
    name:
        Project name shown on the page (e.g. the dataset name).
    test_features, test_labels:
        Optional held-out split ``(M, D)`` / ``(M,)``: the live panel then shows the learning curve
        (held-out accuracy of the current posterior against the number of labels).
    window:
        Labels spanned by the stopping signals (``Session.stopping_signals(window=...)``).
    lease_seconds:
        How long an item shown to one client is kept from the others (0: every client is shown the
        strategy's top pick).
    clock:
        Monotonic clock in seconds (tests pass a fake one).
    user:
        The annotator saved with every answer (default: the answering tab's client id).
    item_ids, item_locations:
        Per pool position: the item's id and its text or file path, for the exports (default: the
        position, and the item when it is a text).
    class_prior:
        For a session whose prior has a mean (a zero-shot head): the row ``(D,)`` of it for a class added
        later, from its name (default: zeros).
    speculate:
        While an item is shown, compute in the background the next pick under each likely answer
        (:mod:`bayesal.serve.speculation`); an answer then returns it without querying. The picks are
        those of the non-speculative loop.
    """

    def __init__(
        self,
        session: Session,
        *,
        name: str = "bayesal",
        test_features: Any = None,
        test_labels: Any = None,
        window: int = 10,
        lease_seconds: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        user: str | None = None,
        item_ids: Sequence[str] | None = None,
        item_locations: Sequence[str] | None = None,
        class_prior: Callable[[str], Any] | None = None,
        speculate: bool = True,
    ) -> None:
        if not isinstance(window, int) or window < 1:
            raise InvalidInputError(f"window must be a positive integer, got {window!r}")
        if not lease_seconds >= 0:
            raise InvalidInputError(f"lease_seconds must be >= 0, got {lease_seconds!r}")
        self.session = session
        self._class_prior = class_prior if session.has_prior_mean else None
        self.name = str(name)
        self.window = window
        self.lease_seconds = float(lease_seconds)
        self._clock = clock
        self.user = user
        self._item_ids = item_ids
        self._item_locations = item_locations
        self._lock = threading.Lock()
        self._names = session.class_names
        self._keys = shortcut_keys(self._names)
        self._test: tuple[torch.Tensor, np.ndarray] | None = None
        if test_features is not None and test_labels is not None and len(test_labels) > 0:
            tx = torch.as_tensor(np.asarray(test_features), dtype=torch.float64)
            ty = np.asarray(test_labels, dtype=np.int64).reshape(-1)
            if tx.ndim != 2 or tx.shape[0] != ty.shape[0] or tx.shape[1] != session.features.shape[1]:
                raise InvalidInputError(
                    f"held-out split of shape {tuple(tx.shape)} with {ty.shape[0]} labels does not match the pool's "
                    f"{session.features.shape[1]} features; pass test features (M, D) and labels (M,)"
                )
            self._test = (tx, ty)
        self._version = 0  # bumped by every change made through the service
        self._leases: dict[str, tuple[int, float]] = {}
        self._query_cache: tuple[tuple[int, int], int, list[int]] | None = None
        self._stats_cache: tuple[tuple[int, int], dict[str, Any]] | None = None
        self._trace: dict[int, dict[str, float]] = {}  # label count -> panel values at that count
        self._views: dict[int, dict[str, Any]] = {}
        # who made each action of the session's history (and of its redo stack), so that a tab undoes
        # only its own: aligned with ``session.history``; None for actions made before this service
        self._owners: list[str | None] = [None] * len(session.history)
        self._redo_owners: list[str | None] = []
        self.acknowledged = 0  # answers recorded through this service (tell), for tests and benchmarks
        #: the thumbnails of an image pool (None for other items), served as files by the app
        self.thumbnails = thumbnails_of(session.items, session.state_dir)
        # the next pick under each likely answer, computed while the person reads (see speculation)
        self.speculator = NextPickSpeculator(session, prepare=self._prepare) if speculate else None
        self._closed = False

    # ------------------------------------------------------------------ helpers (lock held)
    def _client(self, client: str | None) -> str:
        if client is None or client == "":
            return "anonymous"
        if not _CLIENT_RE.match(client):
            raise InvalidInputError("the client id must be 1-64 letters, digits, '-' or '_'")
        return client

    def _label_index(self, label: str) -> int:
        if label not in self._names:
            shown = ", ".join(self._names[:20]) + (" …" if len(self._names) > 20 else "")
            raise InvalidInputError(f"unknown class {label!r}; the classes are: {shown}")
        return self._names.index(label)

    def _check_index(self, index: int) -> int:
        n = int(self.session.features.shape[0])
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise InvalidInputError(f"item index {index!r} is not in the pool [0, {n})")
        return index

    def _changed(self) -> None:
        self._version += 1

    def _owned(self, cid: str) -> None:
        """Note ``cid`` as the maker of the action just recorded (a new action clears the redo stack)."""
        self._owners.append(cid)
        self._redo_owners = []

    def _state_key(self) -> tuple[int, int]:
        """What cached picks and panels depend on: the changes made here and the background refits the
        session swapped in since (a refit lands between two answers)."""
        return self._version, self.session.refits_swapped

    def _query(self, k: int) -> list[int]:
        cached = self._query_cache
        key = self._state_key()
        if cached is not None and cached[0] == key and cached[1] >= k:
            return cached[2][:k]
        picks = self.session.query(k)
        self._query_cache = (key, k, picks)
        return picks

    def _available(self, index: int, labels: dict[int, int], skipped: set[int]) -> bool:
        return index not in labels and index not in skipped

    def _pick(self, client: str, prefer: int | None = None) -> int | None:
        """The item to show ``client``: its leased one if still open, else the best one nobody holds."""
        now = self._clock()
        self._leases = {c: lease for c, lease in self._leases.items() if lease[1] > now}
        labels, skipped = self.session.labels, self.session.skipped
        mine = self._leases.get(client)
        choice: int | None = None
        if prefer is not None and self._available(prefer, labels, skipped):
            choice = prefer
        elif mine is not None and self._available(mine[0], labels, skipped):
            choice = mine[0]
        else:
            held = {i for c, (i, _) in self._leases.items() if c != client}
            picks = self._query(len(held) + 1)
            if not picks:
                self._leases.pop(client, None)
                return None
            choice = next((i for i in picks if i not in held), picks[0])
        if self.lease_seconds > 0:
            self._leases[client] = (choice, now + self.lease_seconds)
            if len(self._leases) > MAX_LEASES:  # bounded: forget the leases that expire first
                for c, _ in sorted(self._leases.items(), key=lambda kv: kv[1][1])[: len(self._leases) - MAX_LEASES]:
                    del self._leases[c]
        if self.speculator is not None:
            # the answer's pick queries as many items as other clients hold, plus one (see below)
            others = sum(1 for c in self._leases if c != client)
            self.speculator.schedule(self._state_key(), choice, others + 1)
        return choice

    def _take_speculated(self, before: tuple[int, int], index: int, label: int) -> None:
        """After ``tell(index, label)`` moved the state from ``before`` by this one change: the picks
        speculated for it become the query cache (a refit swapped in meanwhile makes them stale)."""
        if self.speculator is None:
            return
        key = self._state_key()
        if key != (before[0] + 1, before[1]):
            return
        found = self.speculator.take(before, index, label)
        if found is not None:  # the cache of a query of k picks in this state (used if k are enough)
            self._query_cache = (key, found[0], found[1])

    def _item_view(self, index: int) -> dict[str, Any]:
        # rendered once (also ahead of time, by the speculation, for the items it expects next); an image
        # of an image pool is a URL of its thumbnail file, made once (see thumbnail())
        view = self._views.get(index)
        if view is None:
            items = self.session.items
            if self.thumbnails is not None:
                view = {"kind": "image", "src": self.thumbnail_url(index)}
            else:
                view = item_view(items[index] if items is not None else None, index)
            if len(self._views) > 256:
                self._views.clear()
            self._views[index] = view
        return view

    def _prepare(self, index: int) -> None:
        """Ahead of showing item ``index`` (called by the speculation thread, without the lock): its
        thumbnail file exists (made now if missing, e.g. in a session from before thumbnails were kept)."""
        if self.thumbnails is not None:
            self.thumbnails.ensure(index)
        else:
            self._item_view(index)

    def thumbnail_url(self, index: int) -> str:
        """The path of item ``index``'s thumbnail (``thumbs/<content key>/<index>.png``, relative)."""
        assert self.thumbnails is not None
        return f"thumbs/{self.thumbnails.key}/{int(index)}.png"

    def thumbnail(self, key: str, index: int) -> bytes:
        """PNG bytes of item ``index``'s thumbnail in the pool whose thumbnails have the content key ``key``
        (made and saved on first use if missing). Needs no lock: the files are written atomically.

        Raises :class:`NotFoundError` for a pool without thumbnails, another key or an index out of range.
        """
        thumbs = self.thumbnails
        if thumbs is None or key != thumbs.key:
            raise NotFoundError("no such thumbnail: this session's items are not images, or the address is of "
                                "another item set")
        if isinstance(index, bool) or not 0 <= int(index) < len(thumbs):
            raise NotFoundError(f"no such thumbnail: item index {index} is not in the pool [0, {len(thumbs)})")
        return thumbs.png(int(index))

    def upcoming(self, client: str | None = None, limit: int = 2) -> list[str]:
        """Thumbnail addresses of the items ``client`` is likely shown next: the speculated next pick under
        the most probable answers to its current item, those computed so far (empty for other items)."""
        with self._lock:
            mine = self._leases.get(self._client(client))
            key = self._state_key()
        if self.thumbnails is None or self.speculator is None or mine is None:
            return []
        picks = list(dict.fromkeys(self.speculator.ready(key, mine[0])))[:limit]
        return [self.thumbnail_url(i) for i in picks]

    def _card(self, index: int | None) -> dict[str, Any]:
        """Everything the page shows about the current item (``index=None``: the pool is exhausted)."""
        base = {
            "version": self._version,
            "n_labeled": self.session.n_labeled,
            "can_undo": self.session.can_undo,
            "can_redo": self.session.can_redo,
        }
        if index is None:
            return {**base, "index": None, "done": True}
        guess = model_guess(self.session.predict_proba([index])[0], self.session.n_labeled,
                            prior_informed=self.session.has_prior_mean)
        top = [{"label": self._names[c], "p": round(p, 4)} for c, p in guess.top]
        # "guess": the classes the page highlights (the top one, or those tied at the top; none without
        # information); "no_guess": why the page says the model has no guess yet, instead of showing ``top``
        return {**base, "index": index, "done": False, "item": self._item_view(index), "top": top,
                "guess": [self._names[c] for c in guess.best], "no_guess": guess.no_guess}

    def _describe(self, action: dict[str, Any]) -> dict[str, Any]:
        out = {"op": action["op"]}
        if "index" in action:
            out["index"] = int(action["index"])
        if action["op"] in ("tell", "correct"):
            out["label"] = self._names[int(action["label"])]
        return out

    # ------------------------------------------------------------------ public API
    def info(self) -> dict[str, Any]:
        """Static facts for the page: project name, classes with shortcuts, pool size."""
        with self._lock:
            return self._info()

    def _info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "classes": [{"label": n, "key": k} for n, k in zip(self._names, self._keys)],
            "pool_size": int(self.session.features.shape[0]),
            "has_test": self._test is not None,
            "window": self.window,
        }

    def next_item(self, client: str | None = None) -> dict[str, Any]:
        """The item ``client`` should label now (the same one again until it is answered or skipped)."""
        with self._lock:
            return self._card(self._pick(self._client(client)))

    def answer(self, index: int, label: str, client: str | None = None) -> dict[str, Any]:
        """Record ``label`` for item ``index`` (durable before return); the response holds the next item.

        Raises :class:`StaleAnswerError` if the item is labeled already (by another tab or person);
        :class:`InvalidInputError` for an unknown class or index.
        """
        if self.speculator is not None and label in self._names:
            # a speculation of this very answer still running: wait for it without holding the lock (other
            # tabs and the panel go on meanwhile); the answer then takes its picks
            self.speculator.settle(self._state_key(), index, self._names.index(label), timeout=SETTLE_SECONDS)
        with self._lock:
            cid = self._client(client)
            i, c = self._check_index(index), self._label_index(label)
            labels = self.session.labels
            if i in labels:
                raise StaleAnswerError(
                    f"item #{i} was already labeled {self._names[labels[i]]!r} (in another tab or by another "
                    "person); your answer was not recorded. Correct it in the history if it is wrong"
                )
            before = self._state_key()
            self.session.tell(i, c, user=self.user or cid)
            self.acknowledged += 1
            self._owned(cid)
            self._changed()
            self._take_speculated(before, i, c)
            if self._leases.get(cid, (None,))[0] == i:
                del self._leases[cid]
            return {"recorded": {"op": "tell", "index": i, "label": self._names[c]}, "next": self._card(self._pick(cid))}

    def skip(self, index: int, client: str | None = None) -> dict[str, Any]:
        """Skip item ``index`` (it is not queried again; it can still be labeled later)."""
        with self._lock:
            cid = self._client(client)
            i = self._check_index(index)
            labels, skipped = self.session.labels, self.session.skipped
            if i in labels:
                raise StaleAnswerError(f"item #{i} was already labeled {self._names[labels[i]]!r} elsewhere; nothing skipped")
            if i not in skipped:
                self.session.skip(i)
                self._owned(cid)
                self._changed()
            if self._leases.get(cid, (None,))[0] == i:
                del self._leases[cid]
            return {"recorded": {"op": "skip", "index": i}, "next": self._card(self._pick(cid))}

    def correct(self, index: int, label: str, client: str | None = None) -> dict[str, Any]:
        """Change the label of the already labeled item ``index``."""
        with self._lock:
            cid = self._client(client)
            i, c = self._check_index(index), self._label_index(label)
            if i not in self.session.labels:
                raise StaleAnswerError(f"item #{i} is not labeled (any more); nothing to correct")
            self.session.correct(i, c, user=self.user or cid)
            self._owned(cid)
            self._changed()
            return {"recorded": {"op": "correct", "index": i, "label": self._names[c]}, "next": self._card(self._pick(cid))}

    def undo(self, client: str | None = None, expect_index: int | None = None) -> dict[str, Any]:
        """Undo the last action if ``client`` made it; with ``expect_index`` only if it concerns that item.

        Each client undoes only its own actions: when the last action was made by another client
        (another tab or person), :class:`StaleAnswerError` and nothing is undone, whatever the body
        says. An action made before this service started (no known maker) is undone only when
        ``expect_index`` names its item (the page sends the item of its own last action, kept across
        reloads). An undone answer's item is shown again.
        """
        with self._lock:
            cid = self._client(client)
            history = self.session.history
            if not history:
                raise StaleAnswerError("there is nothing to undo")
            last = history[-1]
            owner = self._owners[-1] if len(self._owners) == len(history) else None
            mismatch = expect_index is not None and int(last.get("index", -1)) != expect_index
            if (owner is not None and owner != cid) or mismatch or (owner is None and expect_index is None):
                raise StaleAnswerError(
                    f"the last action is not this tab's ({self._describe(last)['op']} of item "
                    f"#{last.get('index', '-')}, made in another tab, by another person or before the server "
                    "started); nothing was undone"
                )
            done = self.session.undo()
            self._owners = (self._owners + [None] * len(history))[: len(history) - 1]
            self._redo_owners.append(owner)
            self._changed()
            prefer = int(done["index"]) if done["op"] in ("tell", "skip") else None
            return {"undone": self._describe(done), "next": self._card(self._pick(cid, prefer=prefer))}

    def redo(self, client: str | None = None) -> dict[str, Any]:
        """Re-apply the last undone action."""
        with self._lock:
            cid = self._client(client)
            if not self.session.can_redo:
                raise StaleAnswerError("there is nothing to redo")
            done = self.session.redo()
            redo_owners = self._redo_owners[:-1]
            self._owned(cid)  # the redone action is the redoing tab's from now on
            self._redo_owners = redo_owners
            self._changed()
            if done["op"] in ("tell", "skip") and self._leases.get(cid, (None,))[0] == int(done["index"]):
                del self._leases[cid]
            return {"redone": self._describe(done), "next": self._card(self._pick(cid))}

    def add_class(self, label: str, client: str | None = None) -> dict[str, Any]:
        """Add the class ``label`` after the others (the session reopens from its log: every label is
        kept, the posterior grows a row); the response holds the new ``info`` and the next item."""
        with self._lock:
            cid = self._client(client)
            # a zero-shot session's new class gets its own row of the prior mean (its name embedded)
            self.session.add_class(label, prior_row=None if self._class_prior is None else self._class_prior(label.strip()))
            self._names = self.session.class_names
            self._keys = shortcut_keys(self._names)
            self._query_cache, self._stats_cache = None, None
            self._trace.clear()  # the panel's trace counted fewer classes
            self._changed()
            return {"recorded": {"op": "add_class", "label": self._names[-1]}, "info": self._info(),
                    "next": self._card(self._pick(cid))}

    def retrain(self, client: str | None = None) -> dict[str, Any]:
        """Train the head from scratch on all labels and rebuild the posterior (in the background: the
        next pick is still the current posterior's)."""
        with self._lock:
            cid = self._client(client)
            if len(set(self.session.labels.values())) < 2:
                raise InvalidInputError("retraining needs labels of at least 2 classes")
            t0 = time.perf_counter()
            self.session.retrain()
            self._owned(cid)
            self._changed()
            return {"retrained_on": self.session.n_labeled, "seconds": round(time.perf_counter() - t0, 3),
                    "next": self._card(self._pick(cid))}

    def recent(self, limit: int = 20) -> list[dict[str, Any]]:
        """The last ``limit`` labeled items, newest first: index, label, a short preview."""
        with self._lock:
            labels = list(self.session.labels.items())[-limit:][::-1]
            out = []
            for i, c in labels:
                view = self._item_view(i)
                preview = view.get("text", "")[:80] if view["kind"] != "image" else ""
                row = {"index": i, "label": self._names[c], "preview": preview}
                if view["kind"] == "image":
                    row["src"] = view["src"]
                out.append(row)
            return out

    def stats(self) -> dict[str, Any]:
        """The live panel: labels, class counts, stopping signals and their trace as SVG plots."""
        with self._lock:
            key = self._state_key()
            if self._stats_cache is not None and self._stats_cache[0] == key:
                return self._stats_cache[1]
            labels = self.session.labels
            n = len(labels)
            counts = Counter(labels.values())
            sig = self.session.stopping_signals(window=self.window)
            two_classes = len(counts) >= 2
            point: dict[str, float] = {
                "expected_accuracy": float(sig["expected_accuracy"]),
                "gain_per_label": float(sig["gain_per_label"]),
                "flip_rate": float(sig["flip_rate"]),
            }
            if self._test is not None:
                tx, ty = self._test
                pred = self.session.posterior.predict_proba(tx).argmax(1).numpy()
                point["test_accuracy"] = float((pred == ty).mean())
            if two_classes:
                self._trace = {k: v for k, v in self._trace.items() if k < n}
                self._trace[n] = point
            else:
                self._trace = {}
            xs = sorted(self._trace)
            col = {key: [self._trace[k].get(key, float("nan")) for k in xs] for key in point}
            acc_series = [("model's estimate", xs, col["expected_accuracy"], "#1f77b4")]
            if self._test is not None:
                acc_series.append(("held-out", xs, col["test_accuracy"], "#d62728"))
            plots = {
                "accuracy": line_plot_svg(acc_series, title="accuracy", y_range=(0.0, 1.0)),
                "gain": line_plot_svg([("gain/label", xs, col["gain_per_label"], "#2ca02c")],
                                      title=f"gain per label (last {self.window})"),
                "flips": line_plot_svg([("flips %", xs, [100 * v for v in col["flip_rate"]], "#9467bd")],
                                       title=f"decision flips % (last {self.window})"),
            }
            gain = sig["gain_per_label"]
            out = {
                "version": self._version,
                "n_labeled": n,
                "n_skipped": len(self.session.skipped),
                "pool_size": int(self.session.features.shape[0]),
                "counts": [{"label": name, "count": counts.get(c, 0)} for c, name in enumerate(self._names)],
                "signals_ready": two_classes,
                "expected_accuracy": round(float(sig["expected_accuracy"]), 4),
                "gain_per_label": None if gain != gain else round(float(gain), 5),
                "flips": int(sig["flips"]),
                "flip_rate": round(float(sig["flip_rate"]), 4),
                "window_labels": int(sig["window_labels"]),
                "reference_size": int(sig["reference_size"]),
                "test_accuracy": round(point["test_accuracy"], 4) if "test_accuracy" in point else None,
                "plots": plots,
                "estimate": stop_fields(self.session.estimate()) if two_classes else None,
            }
            self._stats_cache = (key, out)
            return out

    # ------------------------------------------------------------------ exports
    def export_stop(self) -> str:
        """The estimate and the stop recommendation as JSON (:func:`bayesal.labeling.stop_summary`)."""
        with self._lock:
            return stop_summary(self.session)
    def _label_rows(self) -> list[dict[str, Any]]:
        items = self._item_locations
        if items is None and self.session.items is not None:
            items = [v if isinstance(v, str) else "" for v in self.session.items] if self._texts() else None
        # label_doubt: a / (a + g) of the leave-one-out predictive (g: the given label's probability, a: the likeliest other's)
        return label_rows(self.session.history, self._names, ids=self._item_ids, items=items,
                          doubt=self.session.label_doubt())

    def _texts(self) -> bool:
        items = self.session.items
        return items is not None and len(items) > 0 and isinstance(items[0], str)

    def export_csv(self) -> str:
        """Labels as CSV: ``index,label,label_index,item,id,annotator,time,label_doubt`` (item: the text or
        the file path, empty for other items; time: ISO 8601 UTC of the latest answer; ``label_doubt``: see
        :meth:`~bayesal.labeling.session.Session.label_doubt`)."""
        with self._lock:
            rows = self._label_rows()
        return format_labels(rows, "csv")

    def export_jsonl(self) -> str:
        """Labels as JSON lines with the fields of :meth:`export_csv`."""
        with self._lock:
            rows = self._label_rows()
        return format_labels(rows, "jsonl")

    def export_posterior(self) -> bytes:
        """``torch.save`` of the trained head's posterior (``LastLayerLaplace.state_dict()``), the class
        names and the session configuration; load with ``torch.load`` and ``LastLayerLaplace.from_state_dict``."""
        with self._lock:
            payload = {
                "posterior": self.session.posterior.state_dict(),
                "class_names": list(self._names),
                "n_labeled": self.session.n_labeled,
                "config": self.session.config,
            }
        buf = io.BytesIO()
        torch.save(payload, buf)
        return buf.getvalue()

    def close(self) -> None:
        """Flush and close the session (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self.speculator is not None:
                    self.speculator.close()
                self.session.close()
