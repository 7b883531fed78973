package clip

import (
	"bytes"
	"compress/gzip"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
)

// bpe_simple_vocab_16e6.txt.gz is OpenAI CLIP's vocabulary file, the one
// Refiners 0.4.0 ships (MIT; see NOTICE). Its first line is a header, the
// next 48,894 lines are CLIP's merges, ranked by line.
//
//go:embed bpe_simple_vocab_16e6.txt.gz
var embeddedVocabulary []byte

// byteRunes maps each byte to the rune that stands for it in the
// vocabulary's token strings (GPT-2's byte-level alphabet): a byte that is a
// printable Latin-1 character stands for itself; the others (controls,
// space, DEL, U+0080–U+00A0, the soft hyphen) take U+0100, U+0101, ... in
// byte order. byteOrder lists the bytes in vocabulary order: the printable
// ones first, then the others.
var byteRunes, byteOrder = func() ([256]rune, [256]byte) {
	var runes [256]rune
	var order [256]byte
	n, extra := 0, rune(256)
	for b := range 256 {
		if printable(byte(b)) {
			runes[b] = rune(b)
			order[n] = byte(b)
			n++
		}
	}
	for b := range 256 {
		if !printable(byte(b)) {
			runes[b] = extra
			extra++
			order[n] = byte(b)
			n++
		}
	}
	return runes, order
}()

func printable(b byte) bool {
	return '!' <= b && b <= '~' || '¡' <= b && b <= '¬' || '®' <= b
}

// mergeable reports whether a merge's side can ever be formed in Refiners.
// Refiners 0.4.0 maps every byte to the character of the same code
// (chr(b)), not to GPT-2's alphabet, so a byte that is not printable
// (controls, 0x7F–0xA0 and the soft hyphen 0xAD, which include the UTF-8
// continuation bytes of "—", "’", "…" and of emoji) gets its
// token by position, as in OpenAI CLIP, but never matches a merge, whose
// strings are written in GPT-2's alphabet. Such a byte stays one token.
func mergeable(side string) bool {
	for _, r := range side {
		if 0x100 <= r && r <= 0x143 { // the 68 non-printable bytes' runes
			return false
		}
	}
	return true
}

const endOfWord = "</w>"

// loadEmbedded builds the embedded vocabulary once; every NewTokenizer
// shares it (the model is read-only apart from its locked cache).
var loadEmbedded = sync.OnceValues(func() (*model, error) {
	zr, err := gzip.NewReader(bytes.NewReader(embeddedVocabulary))
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: embedded vocabulary: %w", err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, fmt.Errorf("clip tokenizer: embedded vocabulary: %w", err)
	}
	lines := strings.Split(string(raw), "\n")
	if len(lines) < mergeCount+1 {
		return nil, fmt.Errorf("clip tokenizer: embedded vocabulary has %d lines, want at least %d", len(lines), mergeCount+1)
	}
	merges := make([][2]string, mergeCount)
	for i, line := range lines[1 : mergeCount+1] {
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, fmt.Errorf("clip tokenizer: embedded vocabulary line %d: want two tokens, got %q", i+2, line)
		}
		merges[i] = [2]string{f[0], f[1]}
	}
	// Refiners' vocabulary: the 256 byte tokens, the same with </w>, one
	// token per merge, then the two special tokens; a string listed twice
	// keeps its last id, as Refiners' dict comprehension does.
	vocab := make(map[string]int32, VocabularySize)
	id := int32(0)
	for _, b := range byteOrder {
		vocab[string(byteRunes[b])] = id
		id++
	}
	for _, b := range byteOrder {
		vocab[string(byteRunes[b])+endOfWord] = id
		id++
	}
	for _, m := range merges {
		vocab[m[0]+m[1]] = id
		id++
	}
	return newModel(vocab, merges, "embedded vocabulary")
})

// loadFiles reads a diffusers/transformers tokenizer folder's vocab.json and
// merges.txt. It returns the model and the ids of <|startoftext|> and
// <|endoftext|>.
func loadFiles(vocabJSON, mergesTXT string) (*model, int32, int32, error) {
	raw, err := os.ReadFile(vocabJSON)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("clip tokenizer: %w", err)
	}
	var ids map[string]int64
	if err := json.Unmarshal(raw, &ids); err != nil {
		return nil, 0, 0, fmt.Errorf("clip tokenizer: %s: want a JSON object of token → id: %w", vocabJSON, err)
	}
	vocab := make(map[string]int32, len(ids))
	for tok, id := range ids {
		if id < 0 || id >= 1<<31 {
			return nil, 0, 0, fmt.Errorf("clip tokenizer: %s: token %q has id %d, out of range", vocabJSON, tok, id)
		}
		vocab[tok] = int32(id)
	}
	start, ok1 := vocab["<|startoftext|>"]
	end, ok2 := vocab["<|endoftext|>"]
	if !ok1 || !ok2 {
		return nil, 0, 0, fmt.Errorf("clip tokenizer: %s: no <|startoftext|> or <|endoftext|> token; is it a CLIP vocabulary?", vocabJSON)
	}

	raw, err = os.ReadFile(mergesTXT)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("clip tokenizer: %w", err)
	}
	var merges [][2]string
	for i, line := range strings.Split(string(raw), "\n") {
		if i == 0 && strings.HasPrefix(line, "#version") || strings.TrimSpace(line) == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 {
			return nil, 0, 0, fmt.Errorf("clip tokenizer: %s line %d: want two tokens, got %q", mergesTXT, i+1, line)
		}
		merges = append(merges, [2]string{f[0], f[1]})
	}
	m, err := newModel(vocab, merges, vocabJSON+" and "+mergesTXT)
	if err != nil {
		return nil, 0, 0, err
	}
	return m, start, end, nil
}

// newModel resolves every byte token and every merge against vocab.
func newModel(vocab map[string]int32, merges [][2]string, source string) (*model, error) {
	m := &model{
		merges: make(map[uint64]merge, len(merges)),
		cache:  make(map[string][]int32),
	}
	for b := 0; b < 256; b++ {
		s := string(byteRunes[b])
		id, ok1 := vocab[s]
		eid, ok2 := vocab[s+endOfWord]
		if !ok1 || !ok2 {
			return nil, fmt.Errorf("clip tokenizer: %s: byte %#02x (%q or %q) is not in the vocabulary", source, b, s, s+endOfWord)
		}
		m.byteIDs[b], m.endIDs[b] = id, eid
	}
	for rank, pair := range merges {
		if !mergeable(pair[0]) || !mergeable(pair[1]) {
			continue
		}
		left, ok1 := vocab[pair[0]]
		right, ok2 := vocab[pair[1]]
		joined, ok3 := vocab[pair[0]+pair[1]]
		if !ok1 || !ok2 || !ok3 {
			return nil, fmt.Errorf("clip tokenizer: %s: merge %d (%q %q) uses or makes a token that is not in the vocabulary", source, rank+1, pair[0], pair[1])
		}
		// A pair listed twice keeps its last rank, as in Refiners'
		// and transformers' dicts.
		m.merges[pairKey(left, right)] = merge{rank: int32(rank), id: joined}
	}
	return m, nil
}
