package pngtext

import (
	"bytes"
	"image"
	"image/color"
	"image/png"
	"strings"
	"testing"
)

func testPNG(t *testing.T) ([]byte, *image.NRGBA) {
	t.Helper()
	img := image.NewNRGBA(image.Rect(0, 0, 5, 3))
	for i := range img.Pix {
		img.Pix[i] = uint8(i * 7)
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), img
}

func TestSetTextRoundTrip(t *testing.T) {
	orig, img := testPNG(t)
	for _, text := range []string{"", "plain", `{"prompt":"un château, 城堡 🏰","seed":3}`, strings.Repeat("x", 100000)} {
		b, err := SetText(orig, "refiners-recipe", text)
		if err != nil {
			t.Fatal(err)
		}
		texts, err := Texts(b)
		if err != nil {
			t.Fatal(err)
		}
		if texts["refiners-recipe"] != text {
			t.Errorf("read back %.40q, want %.40q", texts["refiners-recipe"], text)
		}
		dec, err := png.Decode(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("image/png cannot decode the file with the chunk: %v", err)
		}
		for y := 0; y < 3; y++ {
			for x := 0; x < 5; x++ {
				if got, want := color.NRGBAModel.Convert(dec.At(x, y)), img.NRGBAAt(x, y); got != want {
					t.Fatalf("pixel %d,%d: %v, want %v", x, y, got, want)
				}
			}
		}
		// Setting again replaces: one chunk of the keyword, same bytes.
		again, err := SetText(b, "refiners-recipe", text)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Error("setting the same text twice changed the file")
		}
		chunks, _ := Chunks(again)
		n := 0
		for _, c := range chunks {
			if c.Type == "iTXt" {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%d iTXt chunks after setting twice, want 1", n)
		}
		if chunks[0].Type != "IHDR" || chunks[1].Type != "iTXt" {
			t.Errorf("chunk order %s, %s: want IHDR then iTXt", chunks[0].Type, chunks[1].Type)
		}
	}
}

func TestTEXtLatin1(t *testing.T) {
	orig, _ := testPNG(t)
	chunks, err := Chunks(orig)
	if err != nil {
		t.Fatal(err)
	}
	out := []byte(Signature)
	out = appendChunk(out, chunks[0].Type, chunks[0].Data)
	out = appendChunk(out, "tEXt", []byte("Comment\x00caf\xe9"))
	for _, c := range chunks[1:] {
		out = appendChunk(out, c.Type, c.Data)
	}
	texts, err := Texts(out)
	if err != nil {
		t.Fatal(err)
	}
	if texts["Comment"] != "café" {
		t.Errorf("tEXt read as %q, want café (Latin-1)", texts["Comment"])
	}
}

func TestBadInput(t *testing.T) {
	orig, _ := testPNG(t)
	withText, err := SetText(orig, "k", "v")
	if err != nil {
		t.Fatal(err)
	}
	badCRC := bytes.Clone(withText)
	badCRC[len(Signature)+25+10] ^= 1 // inside the iTXt chunk after IHDR (25 bytes)
	for _, c := range []struct {
		name string
		png  []byte
		want string
	}{
		{"not png", []byte("GIF89a"), "signature"},
		{"truncated", withText[:len(withText)-5], ""},
		{"bad crc", badCRC, "CRC"},
		{"trailing bytes", append(bytes.Clone(withText), 1, 2, 3), "after IEND"},
		{"no IEND", withText[:len(withText)-12], "no IEND"},
	} {
		if _, err := Texts(c.png); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want an error containing %q", c.name, err, c.want)
		}
	}
	for _, k := range []string{"", " lead", "trail ", "two  spaces", strings.Repeat("k", 80), "nul\x00", "é"} {
		if _, err := SetText(orig, k, "v"); err == nil {
			t.Errorf("keyword %q accepted", k)
		}
	}
	if _, err := SetText(orig, "k", "\xff"); err == nil {
		t.Error("invalid UTF-8 text accepted")
	}
}
