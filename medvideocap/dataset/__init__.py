"""The dataset on disk: the record schema, the hub-native layout and its one member reader, the writer, splits,
card, validate, stats/plots, push and the upstream release reader/convert. Nothing here needs torch."""
