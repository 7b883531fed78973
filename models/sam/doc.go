// Package sam holds the layers of Refiners' Segment Anything
// (refiners.foundationals.segment_anything, SegmentAnythingH) that are more
// than compositions of core layers: the image encoder's relative-position
// attention and window partition/merge, and the prompt encoder's point-type
// embedding. They register themselves in core's layer registry when the
// package is imported (usually through models/all), so that specs/sam*.yaml
// can use them while core stays generic.
package sam
