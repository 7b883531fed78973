// Package clip holds what is specific to CLIP: the layers of its text
// encoder that cannot be written as a spec block of core layers (the token
// table and the positional encoder). They register themselves in core's
// layer registry when the package is imported (usually through models/all),
// so that specs/clip_text.yaml can use them while core stays generic.
package clip
