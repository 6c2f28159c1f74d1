"""The evaluation protocol every quality figure of this project uses (pure numpy).

- Time split: train on events before the cut, test on events from the cut on. Item indices are
  those of :func:`.splits.train_period` (the model's too), then a model's new items (items listed
  without training events, known from side features) if it has any.
- Test users: at least one purchase in training and one test-period purchase of a rankable item
  (with ``target="any"``, read "event" for "purchase" throughout: :data:`.splits.TARGETS`).
- Full ranking over every item the model can rank, never sampled negatives; the baselines rank
  the training items.
- Mode ``all``: targets are the distinct items a user bought in the test period (repeats count).
  Mode ``new``: targets are test items the user never bought before; the items they bought before
  are excluded from the ranking (the model, as served, excludes what the agent's history of the
  user shows; see :mod:`.served`).
- Recall@K = hits / min(K, |targets|); NDCG@K with binary gains; coverage@20 = distinct items in
  all top-20 lists / items.
- Cold start (:func:`.splits.cold_start_split`): the shoppers who bought items with no training events,
  ranked over a run's whole catalogue, which may know such items from their side features.

Modules: :mod:`.splits` (the time split, test users and targets), :mod:`.metrics` (Recall, NDCG,
coverage; the export's quantization quality gate uses the same Recall@K), :mod:`.baselines`,
:mod:`.served` (what an agent serves, in process), :mod:`.evaluate_run` (``cloud-trainer
evaluate``) and :mod:`.report` (its tables and plots).
"""
