// Package clip holds what CLIP models need beyond their layer graph (the
// graphs themselves are specs): the text tokenizer.
//
// Tokenizer is Refiners 0.4.0's CLIPTokenizer in Go: byte-level BPE over
// CLIP's vocabulary (49,408 tokens, 48,894 merges), the prompt lower-cased
// and split by Refiners' pattern with Python's Unicode semantics, at most 75
// tokens between <|startoftext|> (49406) and <|endoftext|> (49407), padded
// with 49407 to 77. Its one known difference from Refiners is the order of
// merges inside a piece where a pair overlaps itself (see model.merge).
package clip

import (
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/refiners-go/refiners/core/tensor"
)

// CLIP's text geometry and special tokens, as Refiners 0.4.0 sets them.
const (
	SequenceLength = 77                 // ids per prompt, start and end included
	MaxTokens      = SequenceLength - 2 // prompt tokens kept; the rest is cut
	VocabularySize = 49408              // 256 bytes, 256 bytes + </w>, 48,894 merges, 2 specials
	StartOfText    = int64(49406)       // <|startoftext|>
	EndOfText      = int64(49407)       // <|endoftext|>, also the padding

	mergeCount = 48894
)

// Tokenizer turns prompts into CLIP token ids. It is safe for concurrent use.
type Tokenizer struct {
	// StartToken begins and EndToken ends every sequence; PadToken fills it
	// to SequenceLength. They come from the vocabulary (<|startoftext|>,
	// <|endoftext|>, <|endoftext|>); a caller may change PadToken for a
	// model trained with another padding.
	StartToken, EndToken, PadToken int64

	model *model
}

// Tokens is one encoded prompt.
type Tokens struct {
	IDs       []int64 // SequenceLength ids: start, at most MaxTokens tokens, end, padding
	Truncated int     // prompt tokens cut beyond MaxTokens (0 when it fits)
}

// NewTokenizer returns a tokenizer over the embedded CLIP vocabulary (the
// file Refiners and OpenAI CLIP ship). The vocabulary is parsed once per
// process and shared.
func NewTokenizer() (*Tokenizer, error) {
	m, err := loadEmbedded()
	if err != nil {
		return nil, err
	}
	return &Tokenizer{StartToken: StartOfText, EndToken: EndOfText, PadToken: EndOfText, model: m}, nil
}

// LoadTokenizer reads a diffusers or transformers tokenizer folder's
// vocab.json (token → id) and merges.txt (an optional "#version" line, then
// one merge per line, in rank order). Text is split and merged exactly as
// with NewTokenizer; only the vocabulary comes from the files. The start and
// end tokens are the files' <|startoftext|> and <|endoftext|>, and padding
// is the end token, as in Refiners.
func LoadTokenizer(vocabJSON, mergesTXT string) (*Tokenizer, error) {
	m, start, end, err := loadFiles(vocabJSON, mergesTXT)
	if err != nil {
		return nil, err
	}
	return &Tokenizer{StartToken: int64(start), EndToken: int64(end), PadToken: int64(end), model: m}, nil
}

// Encode tokenizes one prompt. It fails only on text that is not valid
// UTF-8 (Python cannot hold such a string). Tokens past MaxTokens are cut
// silently, as in Refiners; Truncated says how many.
func (t *Tokenizer) Encode(text string) (Tokens, error) {
	if t == nil || t.model == nil {
		return Tokens{}, errors.New("clip tokenizer: not initialised (use NewTokenizer or LoadTokenizer)")
	}
	if !utf8.ValidString(text) {
		for i := 0; i < len(text); {
			r, n := utf8.DecodeRuneInString(text[i:])
			if r == utf8.RuneError && n == 1 {
				return Tokens{}, fmt.Errorf("clip tokenizer: prompt is not valid UTF-8 (byte %d is %#02x)", i, text[i])
			}
			i += n
		}
	}
	ids := make([]int64, 1, SequenceLength)
	ids[0] = t.StartToken
	total := 0
	pretokenize(text, func(piece []byte) {
		for _, id := range t.model.word(piece) {
			if total < MaxTokens {
				ids = append(ids, int64(id))
			}
			total++
		}
	})
	ids = append(ids, t.EndToken)
	for len(ids) < SequenceLength {
		ids = append(ids, t.PadToken)
	}
	return Tokens{IDs: ids, Truncated: max(0, total-MaxTokens)}, nil
}

// Split returns the pieces the pre-tokenizer cuts text into, lower-cased,
// in order: what Encode byte-pair encodes one by one. Invalid UTF-8 is
// split as if each bad byte were U+FFFD.
func Split(text string) []string {
	var pieces []string
	pretokenize(text, func(piece []byte) { pieces = append(pieces, string(piece)) })
	return pieces
}

// Tensor encodes prompts into an int64 CPU tensor [len(texts), 77] in s,
// and returns each prompt's Tokens (to report truncation).
func (t *Tokenizer) Tensor(s *tensor.Scope, texts ...string) (*tensor.Tensor, []Tokens, error) {
	if len(texts) == 0 {
		return nil, nil, errors.New("clip tokenizer: no prompt to encode")
	}
	flat := make([]int64, 0, len(texts)*SequenceLength)
	all := make([]Tokens, len(texts))
	for i, text := range texts {
		tok, err := t.Encode(text)
		if err != nil {
			return nil, nil, fmt.Errorf("prompt %d: %w", i, err)
		}
		all[i] = tok
		flat = append(flat, tok.IDs...)
	}
	x := s.FromInt64(flat, int64(len(texts)), SequenceLength)
	if err := s.Err(); err != nil {
		return nil, nil, fmt.Errorf("clip tokenizer: %w", err)
	}
	return x, all, nil
}
