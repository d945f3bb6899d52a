"""Label-free drift monitoring: the films a model was tested on (its reference
profile), the films now arriving, and whether they still look alike."""
