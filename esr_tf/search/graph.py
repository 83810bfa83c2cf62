"""Search over a whole catalogue in one servable graph: retrieval, then cross-attention re-ranking.

`CatalogueSearch` (a plain object) holds the relevance model, the query tower and the catalogue
(`CatalogueVariables`, a `tf.Module`: what an export tracks) as variables: product ids, titles,
unit product vectors (stored `[d, N]`), a bfloat16 table of image tokens (one row per distinct
photo; row 0 "no photo") and each product's row in it. Its functions use
stock TF ops plus the TF-Text tokenizer ops the relevance export already has:

- `search(query)` / `search_top(query, k, rerank)`: the query tower's vector against every
  product (exact brute force: one matmul and `top_k`; `k` is dynamic, which keras_rs's
  `BruteForceRetrieval` layer does not allow), the best `rerank` of them scored by the
  cross-attention model on the cached image tokens, the best `k` of those by `rank_weights` over
  the cosine and the model's outputs (`search.ranking`, chosen on valid by `search.blend`; by
  default the model's score alone);
- `retrieve_top(query, k)`: retrieval alone, no model (what `search_top` re-ranks, in retrieval's
  order; `scores` are the cosines, `labels` empty, `probabilities` zero): the fast path (#34);
- `similar_products(product_id)`: nearest products by product vector (the product left out);
- `complements(product_id)`: the `COMPLEMENT_POOL` nearest products re-ranked by the model's
  complement probability with the product's title as the query (only where the label set has a
  complement label). The pool is what retrieval finds near the product: complements far from it
  in embedding space are not seen.

Outputs per query: `product_ids`, `titles`, `labels` [B, k] strings, `scores` [B, k] (what ordered
the list: the ranking key for `search`, the model's expected gain by default; complement probability
for `complements`, cosine for `similar_products`), `probabilities` [B, k, num_labels],
`retrieval_scores` [B, k] (cosine). Bad input is an `InvalidArgumentError` naming it: an empty
query, k outside 1..catalogue size, an unknown product id, too many rows.

Example:
>>> search = CatalogueSearch(model, towers, embed_catalogue(model, towers, products))  # doctest: +SKIP
>>> search.search(tf.constant(["red sneakers"]))["product_ids"].shape  # doctest: +SKIP
TensorShape([1, 10])
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from esr_tf.constants import DEFAULT_K, DEFAULT_RERANK
from esr_tf.preprocessing.pipeline import ANY_RANK_STRINGS, one_value_per_row
from esr_tf.search.catalogue import IndexArrays
from esr_tf.search.ranking import blend_weights, checked_weights, rank_features
from esr_tf.search.towers import query_tower, sentence_embedding, trim_padding

COMPLEMENT_POOL = 100
MAX_SEARCH_ROWS = 64  # queries (or product ids) per request: each costs `rerank` model pairs

_STRINGS = tf.TensorSpec(**ANY_RANK_STRINGS)  # 1-D, checked when a request runs
_INT = tf.TensorSpec([], tf.int32)


def complement_label(label_set) -> int | None:
    """Index of the complement label (code "C" or name "complement"), or None."""
    for i, (name, code) in enumerate(zip(label_set.names, label_set.codes, strict=True)):
        if code.upper() == "C" or name.lower() == "complement":
            return i
    return None


class CatalogueVariables(tf.Module):
    """The catalogue as variables: what an index export tracks as `index` and `read_index` reads back."""

    def __init__(self, model, arrays: IndexArrays, rank_weights=None) -> None:
        super().__init__(name="catalogue")
        # What `search` orders re-ranked products by (`search.ranking`; None: the model's score alone).
        num_labels = model.label_set.num_labels
        weights = blend_weights(1.0, num_labels) if rank_weights is None else checked_weights(rank_weights, num_labels)
        self.rank_weights = tf.Variable(weights, trainable=False, name="rank_weights")
        self.product_ids = tf.Variable(arrays.product_ids.astype(str).tolist(), trainable=False, name="product_ids")
        self.titles = tf.Variable(arrays.titles.astype(str).tolist(), trainable=False, name="titles")
        missing = [f for f in model.preprocessor.product_fields if f != "title" and f not in arrays.fields]
        if missing:
            raise ValueError(f"the model reads product field(s) {missing} that the index arrays lack")
        # The other product fields the relevance model reads (a dict: tracked as index/fields/<name>).
        self.fields = {f: tf.Variable(v.astype(str).tolist(), trainable=False, name=f)
                       for f, v in arrays.fields.items()}
        # Stored [d, N]: `q @ E` then streams contiguous rows; `transpose_b` over [N, d] ran at half
        # the speed on CPU (100k products: 4.3 vs 2.4 ms per query).
        self.embeddings = tf.Variable(np.ascontiguousarray(arrays.embeddings.T, np.float32), trainable=False,
                                      name="embeddings")
        # bfloat16: half the bytes of float32, and no oneDNN float16 fallback warnings on CPU.
        tokens = tf.cast(tf.constant(arrays.photo_tokens, tf.float32), tf.bfloat16)
        self.photo_tokens = tf.Variable(tokens, trainable=False, name="photo_tokens")
        self.photo_row = tf.Variable(arrays.photo_row.astype("int32"), trainable=False, name="photo_row")


class CatalogueSearch:
    """The catalogue and the models that search it (see the module docstring).

    A plain object, not a `tf.Module`: an export tracks only `catalogue` (and the variables its
    functions read, `export.archive`), never the Keras models (keras-team/keras#20095)."""

    def __init__(self, model, towers, arrays: IndexArrays, rank_weights=None) -> None:
        if not len(arrays.product_ids):
            raise ValueError("an index needs at least one product")
        self.model = model
        self.query_tower = query_tower(towers)
        self.size = len(arrays.product_ids)
        self.catalogue = CatalogueVariables(model, arrays, rank_weights)
        c = self.catalogue
        self.product_ids, self.titles, self.fields = c.product_ids, c.titles, c.fields
        self.embeddings, self.photo_tokens, self.photo_row = c.embeddings, c.photo_tokens, c.photo_row
        self.label_names = tf.constant(list(model.label_set.names))
        tokenizer = model.preprocessor.tokenizer  # [CLS], [SEP], [PAD] and [UNK] are no query words
        self.no_word_ids = tf.constant([*model.special_token_ids, tokenizer.token_to_id(tokenizer.oov_token)], tf.int32)
        self.complement = complement_label(model.label_set)
        self.search = tf.function(self._search, input_signature=[_STRINGS])
        self.search_top = tf.function(self._search_top, input_signature=[_STRINGS, _INT, _INT])
        self.retrieve_top = tf.function(self._retrieve_top, input_signature=[_STRINGS, _INT])
        self.similar_products = tf.function(self._similar, input_signature=[_STRINGS])
        if self.complement is not None:
            self.complements = tf.function(self._complements, input_signature=[_STRINGS])

    def signatures(self) -> dict:
        """name -> tf.function, for the export."""
        names = ["search", "search_top", "retrieve_top", "similar_products"]
        names += ["complements"] if self.complement is not None else []
        return {n: getattr(self, n) for n in names}

    # === Input checks (InvalidArgumentError naming the input, before any work starts) ===

    def _rows(self, values: tf.Tensor, what: str) -> tf.Tensor:
        values = one_value_per_row(values, what)
        return _checked(values, tf.shape(values)[0] <= MAX_SEARCH_ROWS,
                        [f"request refused: more than {MAX_SEARCH_ROWS} {what} rows; split it"])

    def _k(self, k: tf.Tensor, name: str = "k") -> tf.Tensor:
        ok = tf.logical_and(k >= 1, k <= self.size)
        return _checked(k, ok, [f"{name} must be in 1..{self.size} (the catalogue size), got", k])

    def _queries(self, query: tf.Tensor) -> tuple[tf.Tensor, dict]:
        """(the checked queries, their packed ids: the query tower reads them too)."""
        query = self._rows(query, "query")
        # Empty = no known word piece left after the tokenizer's own normalisation: "\u00a0", a
        # zero-width space, "\u3000" ([UNK]) or undecodable bytes are as empty as "".
        packed = self.model.preprocessor.tokenize(query, None)
        words = tf.logical_and(tf.equal(packed["segment_ids"], 0), tf.cast(packed["padding_mask"], tf.bool))
        words = tf.logical_and(words, tf.logical_not(tf.reduce_any(
            tf.equal(packed["token_ids"][..., None], self.no_word_ids), axis=-1)))
        empty = tf.logical_not(tf.reduce_any(words, axis=1))
        query = _checked(query, tf.logical_not(tf.reduce_any(empty)), ["empty query at rows", tf.where(empty)[:, 0]])
        return query, packed

    def _lookup(self, product_id: tf.Tensor) -> tf.Tensor:
        """Catalogue rows of `product_id` [B] (an unknown id is an error naming it)."""
        product_id = self._rows(product_id, "product_id")
        hits = tf.equal(product_id[:, None], self.product_ids[None, :])
        found = tf.reduce_any(hits, axis=1)
        hits = _checked(hits, tf.reduce_all(found), ["unknown product_id:", tf.boolean_mask(product_id, ~found)])
        return tf.argmax(tf.cast(hits, tf.int32), axis=1, output_type=tf.int32)

    # === Retrieval and re-ranking ===

    def retrieve(self, vectors: tf.Tensor, n: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """(cosine [B, n], rows [B, n]): exact top-n products by dot product."""
        return tf.math.top_k(tf.matmul(vectors, self.embeddings), n)

    def _rerank(self, queries: tf.Tensor, rows: tf.Tensor) -> dict[str, tf.Tensor]:
        """The relevance model on every (query, retrieved product): `[B, n]` score, `[B, n, L]`."""
        n = tf.shape(rows)[1]
        flat = tf.reshape(rows, [-1])
        photo = tf.gather(self.photo_row, flat)
        tokens = tf.cast(tf.gather(self.photo_tokens, photo), tf.float32)
        has_image = tf.cast(photo > 0, tf.float32)
        pre = self.model.preprocessor
        text = {"title": self.titles, **self.fields}
        product = {f: tf.gather(text[f], flat) for f in pre.product_fields}
        packed = trim_padding(pre.tokenize(tf.repeat(queries, n), product))
        text = self.model.encode_text(packed, training=False)
        out = self.model.score(text, packed, tokens, has_image, training=False)
        shape = tf.shape(rows)
        return {"score": tf.reshape(tf.cast(out["score"], tf.float32), shape),
                # the label count spelled out, not -1: an empty batch has nothing to infer it from
                "probabilities": tf.reshape(tf.cast(out["probabilities"], tf.float32),
                                            tf.concat([shape, [self.model.label_set.num_labels]], 0))}

    def _ranked(self, rows, retrieval, scored, key: tf.Tensor, k) -> dict[str, tf.Tensor]:
        """The best `k` of `rows` by `key` [B, n], with their outputs."""
        top, order = tf.math.top_k(key, k)
        rows = tf.gather(rows, order, batch_dims=1)
        probabilities = tf.gather(scored["probabilities"], order, batch_dims=1)
        return {
            "product_ids": tf.gather(self.product_ids, rows),
            "titles": tf.gather(self.titles, rows),
            "labels": tf.gather(self.label_names, tf.argmax(probabilities, axis=-1, output_type=tf.int32)),
            "scores": top,
            "probabilities": probabilities,
            "retrieval_scores": tf.gather(retrieval, order, batch_dims=1),
        }

    def query_vectors(self, query: tf.Tensor, packed: dict | None = None) -> tf.Tensor:
        return self.query_tower(sentence_embedding(self.model, query, packed), training=False)

    def _search_top(self, query, k, rerank):
        query, packed = self._queries(query)
        k = self._k(k)
        n = tf.clip_by_value(tf.maximum(rerank, k), 1, self.size)  # re-rank at least k, at most all
        retrieval, rows = self.retrieve(self.query_vectors(query, packed), n)
        scored = self._rerank(query, rows)
        features = rank_features(retrieval, scored["probabilities"], scored["score"])
        return self._ranked(rows, retrieval, scored, tf.linalg.matvec(features, self.catalogue.rank_weights), k)

    def _retrieve_top(self, query, k):
        query, packed = self._queries(query)
        retrieval, rows = self.retrieve(self.query_vectors(query, packed), self._k(k))
        shape = tf.shape(rows)
        return {
            "product_ids": tf.gather(self.product_ids, rows),
            "titles": tf.gather(self.titles, rows),
            "labels": tf.fill(shape, ""),  # no model ran: nothing to label
            "scores": retrieval,
            "probabilities": tf.zeros(tf.concat([shape, [self.model.label_set.num_labels]], 0)),
            "retrieval_scores": retrieval,
        }

    def _search(self, query):
        return self._search_top(query, tf.constant(min(DEFAULT_K, self.size)), tf.constant(DEFAULT_RERANK))

    def _neighbours(self, rows, n: int):
        """(cosine [B, n], rows [B, n]) of the products nearest each of `rows`, itself left out."""
        vectors = tf.transpose(tf.gather(self.embeddings, rows, axis=1))
        scores = tf.matmul(vectors, self.embeddings)
        scores = scores + tf.one_hot(rows, self.size, on_value=-1e9)  # never the product itself
        return tf.math.top_k(scores, n)

    def _similar(self, product_id):
        k = min(DEFAULT_K, self.size - 1)
        rows = self._lookup(product_id)
        rows = _checked(rows, tf.constant(k >= 1), ["similar_products needs a catalogue of 2 or more products"])
        retrieval, near = self._neighbours(rows, k)
        scored = self._rerank(tf.gather(self.titles, rows), near)
        return self._ranked(near, retrieval, scored, retrieval, k)

    def _complements(self, product_id):
        pool = min(COMPLEMENT_POOL, self.size - 1)
        k = min(DEFAULT_K, pool)
        rows = self._lookup(product_id)
        rows = _checked(rows, tf.constant(k >= 1), ["complements needs a catalogue of 2 or more products"])
        retrieval, near = self._neighbours(rows, pool)
        scored = self._rerank(tf.gather(self.titles, rows), near)
        return self._ranked(near, retrieval, scored, scored["probabilities"][..., self.complement], k)


def _checked(value: tf.Tensor, condition: tf.Tensor, data: list) -> tf.Tensor:
    """`value`, usable only after `condition` held (InvalidArgumentError with `data` otherwise)."""
    with tf.control_dependencies([tf.debugging.Assert(condition, data, summarize=10)]):
        return tf.identity(value)
