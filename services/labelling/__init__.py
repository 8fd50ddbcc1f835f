"""Labelling: joins validated frames with their (late) ground truth into training examples."""
