"""The training stages: one LightningModule each (fine-tune, distill, prune, QAT) on a thin shared base."""
