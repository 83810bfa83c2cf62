"""Search over a whole catalogue: retrieval with a two-tower model, re-ranking with the relevance model.

One package for the whole capability (keras-rs style, a module a role):

- `towers`: the two-tower model (`build_two_tower`, `query_tower`, `product_tower`,
  `sentence_embedding`), over the relevance model's frozen BERT and image tokens;
- `embeddings`: text embeddings, the photo token table and the towers' inputs (numpy);
- `fit`: `fit_retrieval` (keras_rs sampling correction, accidental hits, judged hard negatives);
- `catalogue`: `IndexArrays`, `embed_catalogue`, `merge`, `read_index`;
- `graph`: `CatalogueSearch`, the servable graph (`search`, `search_top`, `similar_products`,
  `complements`);
- `ranking`, `list_head`, `blend`: the key `search` orders re-ranked products by, the list head
  fitted on retrieval's lists, and the choice between it and the blends on valid;
- `index`: `export_search_index` / `update_search_index` (versioned SavedModels, `--add` / `--remove`);
- `evaluate`: recall / nDCG over the whole catalogue; `client`: `SearchClient` (in process);
- `requests`: REST / gRPC bodies and warm-up records; `cli`: `esr-tf index` / `esr-tf search`;
- `bench`: `esr-tf bench --suite search`.

Example:
>>> from esr_tf.search.index import export_search_index  # doctest: +SKIP
>>> path = export_search_index(model, towers, products, "serving_models", model_name="shop")  # doctest: +SKIP
"""
