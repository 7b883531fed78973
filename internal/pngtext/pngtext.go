// Package pngtext reads and writes the text chunks of PNG files (iTXt,
// tEXt; PNG specification, 3rd edition, §11.3.3), which the standard
// library's image/png neither writes nor returns. Only uncompressed text
// is written; compressed iTXt and zTXt chunks are skipped when reading.
package pngtext

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unicode/utf8"
)

// Signature is the 8 bytes every PNG file starts with.
const Signature = "\x89PNG\r\n\x1a\n"

// maxChunk bounds a chunk's declared length (the format allows 2^31−1).
const maxChunk = 1<<31 - 1

// Chunk is one chunk of a PNG file: its type and data.
type Chunk struct {
	Type string
	Data []byte
}

// Chunks splits a PNG file into its chunks, checking the signature, each
// chunk's length and CRC, and that the file ends with IEND.
func Chunks(png []byte) ([]Chunk, error) {
	if !bytes.HasPrefix(png, []byte(Signature)) {
		return nil, errors.New("png: not a PNG file (bad signature)")
	}
	rest := png[len(Signature):]
	var out []Chunk
	for len(rest) > 0 {
		if len(rest) < 12 {
			return nil, fmt.Errorf("png: truncated chunk at byte %d", len(png)-len(rest))
		}
		n := binary.BigEndian.Uint32(rest)
		if n > maxChunk || int64(n) > int64(len(rest)-12) {
			return nil, fmt.Errorf("png: chunk at byte %d declares %d bytes, more than the file holds", len(png)-len(rest), n)
		}
		typ, data := rest[4:8], rest[8:8+n]
		if got, want := crc32.ChecksumIEEE(rest[4:8+n]), binary.BigEndian.Uint32(rest[8+n:]); got != want {
			return nil, fmt.Errorf("png: chunk %q at byte %d: CRC %08x, want %08x", typ, len(png)-len(rest), got, want)
		}
		out = append(out, Chunk{Type: string(typ), Data: data})
		rest = rest[12+n:]
		if string(typ) == "IEND" {
			if len(rest) > 0 {
				return nil, fmt.Errorf("png: %d bytes after IEND", len(rest))
			}
			return out, nil
		}
	}
	return nil, errors.New("png: no IEND chunk")
}

// appendChunk writes one chunk: length, type, data, CRC of type and data.
func appendChunk(dst []byte, typ string, data []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(data)))
	start := len(dst)
	dst = append(dst, typ...)
	dst = append(dst, data...)
	return binary.BigEndian.AppendUint32(dst, crc32.ChecksumIEEE(dst[start:]))
}

// checkKeyword enforces the PNG keyword rules: 1 to 79 printable Latin-1
// characters, no leading, trailing or double spaces.
func checkKeyword(k string) error {
	if len(k) < 1 || len(k) > 79 {
		return fmt.Errorf("png: keyword %q: want 1 to 79 characters", k)
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 32 || c > 126 {
			return fmt.Errorf("png: keyword %q: only printable ASCII is allowed here", k)
		}
	}
	if k[0] == ' ' || k[len(k)-1] == ' ' || bytes.Contains([]byte(k), []byte("  ")) {
		return fmt.Errorf("png: keyword %q: no leading, trailing or consecutive spaces", k)
	}
	return nil
}

// SetText returns a copy of png with an uncompressed iTXt chunk (UTF-8
// text) under keyword, placed right after IHDR; any earlier tEXt or iTXt
// chunk of that keyword is dropped, so setting twice keeps one. The image
// data is untouched.
func SetText(png []byte, keyword, text string) ([]byte, error) {
	if err := checkKeyword(keyword); err != nil {
		return nil, err
	}
	if !utf8.ValidString(text) {
		return nil, errors.New("png: text is not valid UTF-8")
	}
	chunks, err := Chunks(png)
	if err != nil {
		return nil, err
	}
	if len(chunks) == 0 || chunks[0].Type != "IHDR" {
		return nil, errors.New("png: the first chunk is not IHDR")
	}
	// keyword NUL, compression flag 0, method 0, empty language tag NUL,
	// empty translated keyword NUL, text.
	data := make([]byte, 0, len(keyword)+5+len(text))
	data = append(data, keyword...)
	data = append(data, 0, 0, 0, 0, 0)
	data = append(data, text...)
	out := make([]byte, 0, len(png)+len(data)+12)
	out = append(out, Signature...)
	for i, c := range chunks {
		if k, _, ok := textOf(c); ok && k == keyword {
			continue
		}
		out = appendChunk(out, c.Type, c.Data)
		if i == 0 {
			out = appendChunk(out, "iTXt", data)
		}
	}
	return out, nil
}

// Texts returns the uncompressed text chunks (tEXt as Latin-1, iTXt as
// UTF-8) by keyword; the first chunk of a keyword wins.
func Texts(png []byte) (map[string]string, error) {
	chunks, err := Chunks(png)
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, c := range chunks {
		if k, v, ok := textOf(c); ok {
			if _, seen := out[k]; !seen {
				out[k] = v
			}
		}
	}
	return out, nil
}

// textOf decodes a tEXt or uncompressed iTXt chunk.
func textOf(c Chunk) (keyword, text string, ok bool) {
	switch c.Type {
	case "tEXt":
		k, v, found := bytes.Cut(c.Data, []byte{0})
		if !found {
			return "", "", false
		}
		runes := make([]rune, len(v)) // Latin-1
		for i, b := range v {
			runes[i] = rune(b)
		}
		return string(k), string(runes), true
	case "iTXt":
		k, rest, found := bytes.Cut(c.Data, []byte{0})
		if !found || len(rest) < 2 || rest[0] != 0 { // compressed: not read
			return "", "", false
		}
		rest = rest[2:]
		_, rest, found = bytes.Cut(rest, []byte{0}) // language tag
		if !found {
			return "", "", false
		}
		_, rest, found = bytes.Cut(rest, []byte{0}) // translated keyword
		if !found || !utf8.Valid(rest) {
			return "", "", false
		}
		return string(k), string(rest), true
	}
	return "", "", false
}
