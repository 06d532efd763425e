"""The cost ledger: every provider call that is or may be billed, written as it happens.

- `pricing`: the one price table (what each provider bills, with the source of each
  figure, each overridable by environment);
- `settings`: the budgets (BATCH_BUDGET_USD, AVATAR_DAILY_BUDGET_USD);
- `validation`: bad budget or price variables refused before anything is spent;
- `store`: the rows (reserve against the budgets atomically, bill, settle, record);
- `jobs`: the `BilledJob` the provider chain hands each billed image attempt;
- `totals`: what a batch, a provider or a day cost, summed by the database.

Prefect-free: the chain, the hook writer and the moderator call it directly.
"""
