"""Records: image decoding, preprocessing to TFRecord shards, and the tf.data pipeline that reads them."""
