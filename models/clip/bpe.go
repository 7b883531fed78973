package clip

import "sync"

// model is a byte-level BPE vocabulary: token ids for single bytes (plain
// and word-final), and the merges keyed by the ids of the pair.
type model struct {
	byteIDs [256]int32 // the byte's token
	endIDs  [256]int32 // the byte's token with </w>, for a piece's last byte
	merges  map[uint64]merge

	mu    sync.Mutex
	cache map[string][]int32 // piece bytes → token ids; read-only slices
}

type merge struct {
	rank int32 // line in the merges list: lower merges first
	id   int32 // the joined token
}

func pairKey(left, right int32) uint64 { return uint64(uint32(left))<<32 | uint64(uint32(right)) }

// Bounds on the per-model cache of encoded pieces: prompts repeat words, so
// it saves most of the merging, but a daemon must not grow it without end.
const (
	cacheEntries  = 1 << 16
	cacheMaxPiece = 64 // bytes; longer pieces are rare and not cached
)

// word returns the token ids of one piece (its UTF-8 bytes). The returned
// slice must not be modified.
func (m *model) word(piece []byte) []int32 {
	if len(piece) <= cacheMaxPiece {
		m.mu.Lock()
		ids, ok := m.cache[string(piece)]
		m.mu.Unlock()
		if ok {
			return ids
		}
	}
	ids := m.merge(piece)
	if len(piece) <= cacheMaxPiece {
		m.mu.Lock()
		if len(m.cache) >= cacheEntries {
			clear(m.cache)
		}
		m.cache[string(piece)] = ids
		m.mu.Unlock()
	}
	return ids
}

// symbol is one token of a piece being merged, in a doubly linked list over
// the piece's byte positions; a merged-away symbol has dead set.
type symbol struct {
	id         int32
	prev, next int32 // positions, -1 at the ends
	dead       bool
}

// candidate is a mergeable adjacent pair: the symbols at pos and its next,
// whose ids were left and right when it was queued.
type candidate struct {
	rank, pos   int32
	left, right int32
	joined      int32
}

// queue is a binary min-heap of candidates ordered by rank, then by
// position: the lowest-ranked pair is merged first and, among equal pairs,
// the leftmost.
type queue []candidate

func (q queue) less(i, j int) bool {
	return q[i].rank < q[j].rank || q[i].rank == q[j].rank && q[i].pos < q[j].pos
}

func (q *queue) push(c candidate) {
	*q = append(*q, c)
	h := *q
	for i := len(h) - 1; i > 0; {
		parent := (i - 1) / 2
		if !h.less(i, parent) {
			break
		}
		h[i], h[parent] = h[parent], h[i]
		i = parent
	}
}

func (q *queue) pop() candidate {
	h := *q
	top := h[0]
	last := len(h) - 1
	h[0] = h[last]
	h = h[:last]
	for i := 0; ; {
		small, l, r := i, 2*i+1, 2*i+2
		if l < len(h) && h.less(l, small) {
			small = l
		}
		if r < len(h) && h.less(r, small) {
			small = r
		}
		if small == i {
			break
		}
		h[i], h[small] = h[small], h[i]
		i = small
	}
	*q = h
	return top
}

// merge byte-pair encodes a piece: its bytes become tokens (the last one
// with </w>), then, while any adjacent pair has a merge, the lowest-ranked
// pair is joined, the leftmost one first where it occurs more than once.
//
// That is OpenAI CLIP's and transformers' merge order. Refiners 0.4.0 joins
// one occurrence per pass and takes it from a Python set, so where a pair
// overlaps itself ("aaaa": a·a at 0 and at 1) its pick, and so its tokens,
// depend on PYTHONHASHSEED; the leftmost pick is one of its outcomes. Its
// recursion also fails past about a thousand merges in one piece, which
// this loop does not. A heap keeps long pieces O(n log n).
func (m *model) merge(piece []byte) []int32 {
	n := len(piece)
	syms := make([]symbol, n)
	for i, b := range piece {
		syms[i] = symbol{id: m.byteIDs[b], prev: int32(i - 1), next: int32(i + 1)}
	}
	syms[n-1].id = m.endIDs[piece[n-1]]
	syms[n-1].next = -1

	q := make(queue, 0, n)
	consider := func(pos int32) {
		next := syms[pos].next
		if next < 0 {
			return
		}
		if mg, ok := m.merges[pairKey(syms[pos].id, syms[next].id)]; ok {
			q.push(candidate{rank: mg.rank, pos: pos, left: syms[pos].id, right: syms[next].id, joined: mg.id})
		}
	}
	for i := range n - 1 {
		consider(int32(i))
	}

	for len(q) > 0 {
		c := q.pop()
		// A queued pair is stale once either side has changed: a token
		// only grows, so equal ids mean the same, untouched symbols.
		left := &syms[c.pos]
		if left.dead || left.id != c.left || left.next < 0 || syms[left.next].id != c.right {
			continue
		}
		right := &syms[left.next]
		left.id = c.joined
		right.dead = true
		left.next = right.next
		if right.next >= 0 {
			syms[right.next].prev = c.pos
		}
		if left.prev >= 0 {
			consider(left.prev)
		}
		consider(c.pos)
	}

	ids := make([]int32, 0, 4)
	for i := int32(0); i >= 0; i = syms[i].next {
		ids = append(ids, syms[i].id)
	}
	return ids
}
