"""Reading dataset files: the decoded cache (ImageStore), image trees, downloads, safe pickles and TFRecords."""
