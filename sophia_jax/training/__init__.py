"""Policy training: the off-policy loss (Eq. 7) and, later, the train step, optimizer and trainer."""
