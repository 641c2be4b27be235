"""Keras models that own a train_step (JEM, the classifier baseline) and the loop around them."""
