"""Numba kernels of the fractal renderer: random numbers, chaos game, colouring, background, blur.

Every random choice of an image comes from generators seeded inside these kernels with the image's
seeds (xorshift64* streams and counter-based splitmix64 hashes). An image therefore depends only on
its seeds and inputs, never on numba's or numpy's global generators, which are separate and not
seeded by each other. Images are uint8 (H, W, 3) RGB arrays.

The rendering steps follow Anderson & Farrell's public generator (WACV 2022): parameter jitter,
chaos game from the fixed point of w_1, window = bounding box of the points with random scale and
shift, optional random 3x3 binary stamp per point, hue from point density, diamond-square
background, random flips and transposes, 3x3 Gaussian blur.
"""

import math

import numpy as np
from numba import njit

U64 = np.uint64
F32 = np.float32

# xorshift64* output multiplier and splitmix64 constants.
XORSHIFT_MULTIPLIER = U64(0x2545F4914F6CDD1D)
GOLDEN_GAMMA = U64(0x9E3779B97F4A7C15)
MIX_1 = U64(0xBF58476D1CE4E5B9)
MIX_2 = U64(0x94D049BB133111EB)

# Map choice uses 12 random bits per point: a table of 4096 map indices whose entry counts are
# proportional to the map probabilities (each map keeps at least one entry).
CHOICE_BITS = 12
CHOICE_TABLE_SIZE = 1 << CHOICE_BITS

# Four independent chains run interleaved, so the processor overlaps their dependent multiply-adds.
CHAINS = 4
# Chain steps discarded before recording. Contractive systems start on the attractor and lose
# nothing; FractalDB systems, whose w_1 need not contract, reach the attractor first.
BURN_IN = 16
# Points farther than this from the origin count as a diverging chaos game.
DIVERGENCE_LIMIT = 1e6
# Pixel coordinates p become integers as int(p + PIXEL_BIAS) - PIXEL_BIAS, so the float-to-int
# conversion gets non-negative inputs near the window, where truncation equals floor.
PIXEL_BIAS = 16

HUE_LEVELS = 256
BACKGROUND_LEVELS = 1024


# ---------------------------------------------------------------- random numbers


@njit(cache=True, inline="always")
def splitmix64(value):
    """Return the splitmix64 hash of a uint64 (used to derive independent seeds)."""
    z = value + GOLDEN_GAMMA
    z = (z ^ (z >> U64(30))) * MIX_1
    z = (z ^ (z >> U64(27))) * MIX_2
    return z ^ (z >> U64(31))


@njit(cache=True, inline="always")
def next_u64(state):
    """Advance the xorshift64* stream in state[0] and return 64 random bits."""
    s = state[0]
    s ^= s << U64(13)
    s ^= s >> U64(7)
    s ^= s << U64(17)
    state[0] = s
    return s * XORSHIFT_MULTIPLIER


@njit(cache=True, inline="always")
def uniform(state, low, high):
    """Return a float64 uniform in [low, high)."""
    return low + (high - low) * (float(next_u64(state) >> U64(11)) * (1.0 / 9007199254740992.0))


@njit(cache=True, inline="always")
def randint(state, n):
    """Return an int uniform in [0, n) (multiply-shift on 32 random bits)."""
    return np.int64(((next_u64(state) >> U64(32)) * U64(n)) >> U64(32))


@njit(cache=True)
def new_stream(seed):
    """Return a one-element uint64 state array for the stream of `seed` (never zero)."""
    state = np.empty(1, dtype=np.uint64)
    state[0] = splitmix64(U64(seed)) | U64(1)
    return state


# ---------------------------------------------------------------- IFS parameters


@njit(cache=True)
def max_singular_value(a, b, c, d):
    """Return the largest singular value of [[a, b], [c, d]]."""
    s = a * a + b * b + c * c + d * d
    det = a * d - b * c
    return math.sqrt(0.5 * (s + math.sqrt(max(s * s - 4.0 * det * det, 0.0))))


@njit(cache=True)
def jitter_system(system, state, enabled, low, high):
    """Return a copy of an (N, 2, 3) system with one random map scaled by U(low, high).

    The whole map (matrix and translation) is scaled, as in Anderson & Farrell's generator. A scale
    that makes the largest singular value exceed 1 is rejected, and after 4 rejections the system
    is returned unchanged.
    """
    out = system.copy()
    if not enabled:
        return out
    for _ in range(4):
        k = randint(state, system.shape[0])
        factor = uniform(state, low, high)
        a = system[k, 0, 0] * factor
        b = system[k, 0, 1] * factor
        c = system[k, 1, 0] * factor
        d = system[k, 1, 1] * factor
        if max_singular_value(a, b, c, d) <= 1.0:
            for i in range(2):
                for j in range(3):
                    out[k, i, j] = system[k, i, j] * factor
            return out
    return out


@njit(cache=True)
def build_choice_table(system, table):
    """Fill `table` (uint8, CHOICE_TABLE_SIZE) with map indices in proportion to |det A_i|.

    Uses largest-remainder rounding with at least one entry per map, so each probability is off by
    at most N / 4096 for N maps. All-zero determinants give equal probabilities.
    """
    n = system.shape[0]
    weights = np.empty(n)
    total = 0.0
    for i in range(n):
        weights[i] = abs(system[i, 0, 0] * system[i, 1, 1] - system[i, 0, 1] * system[i, 1, 0])
        total += weights[i]
    if total <= 0.0:
        for i in range(n):
            weights[i] = 1.0
        total = float(n)
    counts = np.empty(n, dtype=np.int64)
    remainders = np.empty(n)
    used = 0
    for i in range(n):
        exact = weights[i] / total * CHOICE_TABLE_SIZE
        counts[i] = max(1, int(exact))
        remainders[i] = exact - counts[i]
        used += counts[i]
    while used < CHOICE_TABLE_SIZE:
        best = np.argmax(remainders)
        counts[best] += 1
        remainders[best] -= 1.0
        used += 1
    while used > CHOICE_TABLE_SIZE:
        best = np.argmax(counts)
        counts[best] -= 1
        used -= 1
    position = 0
    for i in range(n):
        for _ in range(counts[i]):
            table[position] = i
            position += 1


@njit(cache=True)
def start_point(system):
    """Return the fixed point of w_1 (solution of (I - A_1) x = b_1), or the origin if singular."""
    a = 1.0 - system[0, 0, 0]
    b = -system[0, 0, 1]
    c = -system[0, 1, 0]
    d = 1.0 - system[0, 1, 1]
    det = a * d - b * c
    if abs(det) < 1e-12:
        return 0.0, 0.0
    e = system[0, 0, 2]
    f = system[0, 1, 2]
    return (d * e - b * f) / det, (a * f - c * e) / det


# ---------------------------------------------------------------- chaos game


@njit(cache=True, inline="always")
def recorded_points(points):
    """Return how many points chaos_game writes for a request of `points`: a multiple of CHAINS."""
    return ((points + CHAINS - 1) // CHAINS) * CHAINS


@njit(cache=True)
def chaos_game(system, points, state, table, buffer):
    """Write chaos-game points of the system into buffer[0] (x) and buffer[1] (y), float32.

    Writes `points` rounded up to a multiple of CHAINS (see recorded_points), so buffer needs shape
    (2, C) with C at least that. Runs CHAINS chains from the fixed point of w_1, interleaved, with
    map choices drawn 12 bits at a time from a local xorshift64* stream and looked up in the choice
    table (no per-point search). Returns the bounding box (x_min, x_max, y_min, y_max) and ok,
    which is False when the points diverged.
    """
    build_choice_table(system, table)
    n = system.shape[0]
    coefficients = np.empty((n, 6), dtype=np.float32)
    for k in range(n):
        coefficients[k, 0] = system[k, 0, 0]
        coefficients[k, 1] = system[k, 0, 1]
        coefficients[k, 2] = system[k, 0, 2]
        coefficients[k, 3] = system[k, 1, 0]
        coefficients[k, 4] = system[k, 1, 1]
        coefficients[k, 5] = system[k, 1, 2]

    x_start, y_start = start_point(system)
    x0 = F32(x_start)
    y0 = F32(y_start)
    x1, y1, x2, y2, x3, y3 = x0, y0, x0, y0, x0, y0
    s = next_u64(state) | U64(1)
    mask = U64(CHOICE_TABLE_SIZE - 1)
    steps = (points + CHAINS - 1) // CHAINS
    # (step, chain) views, so the stores below use constant, non-negative column indices.
    x_out = buffer[0, : steps * CHAINS].reshape((steps, CHAINS))
    y_out = buffer[1, : steps * CHAINS].reshape((steps, CHAINS))

    x_low0 = x_low1 = x_low2 = x_low3 = F32(np.inf)
    y_low0 = y_low1 = y_low2 = y_low3 = F32(np.inf)
    x_high0 = x_high1 = x_high2 = x_high3 = F32(-np.inf)
    y_high0 = y_high1 = y_high2 = y_high3 = F32(-np.inf)

    # Each 64-bit draw gives one 12-bit choice per chain, taken from the high 48 bits.
    for step in range(-BURN_IN, steps):
        s ^= s << U64(13)
        s ^= s >> U64(7)
        s ^= s << U64(17)
        r = s * XORSHIFT_MULTIPLIER
        t = coefficients[table[(r >> U64(16)) & mask]]
        x_next = t[0] * x0 + t[1] * y0 + t[2]
        y0 = t[3] * x0 + t[4] * y0 + t[5]
        x0 = x_next
        t = coefficients[table[(r >> U64(28)) & mask]]
        x_next = t[0] * x1 + t[1] * y1 + t[2]
        y1 = t[3] * x1 + t[4] * y1 + t[5]
        x1 = x_next
        t = coefficients[table[(r >> U64(40)) & mask]]
        x_next = t[0] * x2 + t[1] * y2 + t[2]
        y2 = t[3] * x2 + t[4] * y2 + t[5]
        x2 = x_next
        t = coefficients[table[(r >> U64(52)) & mask]]
        x_next = t[0] * x3 + t[1] * y3 + t[2]
        y3 = t[3] * x3 + t[4] * y3 + t[5]
        x3 = x_next
        if step >= 0:
            # Bounding box per chain, in registers: a separate pass over the buffer costs more
            # because numba's float min/max reductions do not vectorize.
            x_low0 = x0 if x0 < x_low0 else x_low0
            x_high0 = x0 if x0 > x_high0 else x_high0
            x_low1 = x1 if x1 < x_low1 else x_low1
            x_high1 = x1 if x1 > x_high1 else x_high1
            x_low2 = x2 if x2 < x_low2 else x_low2
            x_high2 = x2 if x2 > x_high2 else x_high2
            x_low3 = x3 if x3 < x_low3 else x_low3
            x_high3 = x3 if x3 > x_high3 else x_high3
            y_low0 = y0 if y0 < y_low0 else y_low0
            y_high0 = y0 if y0 > y_high0 else y_high0
            y_low1 = y1 if y1 < y_low1 else y_low1
            y_high1 = y1 if y1 > y_high1 else y_high1
            y_low2 = y2 if y2 < y_low2 else y_low2
            y_high2 = y2 if y2 > y_high2 else y_high2
            y_low3 = y3 if y3 < y_low3 else y_low3
            y_high3 = y3 if y3 > y_high3 else y_high3
            x_row = x_out[step]
            y_row = y_out[step]
            x_row[0] = x0
            y_row[0] = y0
            x_row[1] = x1
            y_row[1] = y1
            x_row[2] = x2
            y_row[2] = y2
            x_row[3] = x3
            y_row[3] = y3

    x_min = min(min(x_low0, x_low1), min(x_low2, x_low3))
    x_max = max(max(x_high0, x_high1), max(x_high2, x_high3))
    y_min = min(min(y_low0, y_low1), min(y_low2, y_low3))
    y_max = max(max(y_high0, y_high1), max(y_high2, y_high3))

    # A diverging chain passes through huge values and infinities before any NaN, so the box
    # catches it although the comparisons above skip NaN.
    limit = DIVERGENCE_LIMIT
    ok = (
        abs(x_min) < limit and abs(x_max) < limit and abs(y_min) < limit and abs(y_max) < limit
    )
    return float(x_min), float(x_max), float(y_min), float(y_max), ok


@njit(cache=True)
def bin_points(buffer, points, x_low, x_scale, y_low, y_scale, flip_x, flip_y, transpose, size, indices, counts):
    """Count points per pixel into counts, a zeroed flat uint32 canvas of (size + 2)^2 + 1 entries.

    Pixel (i, j) of the size x size image is counts[(i + 1) * (size + 2) + j + 1]. The one-pixel
    border collects points just outside the image, whose 3x3 stamps reach into it. The last entry
    collects all points farther out. Column j contains x in
    [x_low + j / x_scale, x_low + (j + 1) / x_scale), as in Anderson & Farrell's renderer (rows
    likewise from y). flip_x mirrors the columns (j -> size - 1 - j), flip_y the rows, and
    `transpose` then swaps rows and columns. `indices` (int32, >= points) is scratch space.
    """
    width = size + 2
    outside = width * width
    bias = F32(PIXEL_BIAS + 1)
    x0 = F32(x_low)
    y0 = F32(y_low)
    sx = F32(x_scale)
    sy = F32(y_scale)
    low = F32(0.0)
    high = F32(4 * size + 64)
    limit = np.uint32(width)
    mirror = np.int32(width - 1)

    # Pixel indices first: this loop has no memory dependencies and vectorizes. Subtracting x_low
    # before scaling keeps x_min at a non-negative product, so no point of the window is lost.
    xs = buffer[0]
    ys = buffer[1]
    for i in range(points):
        fx = min(max((xs[i] - x0) * sx + bias, low), high)
        fy = min(max((ys[i] - y0) * sy + bias, low), high)
        column = np.int32(fx) - PIXEL_BIAS
        row = np.int32(fy) - PIXEL_BIAS
        if flip_x:
            column = mirror - column
        if flip_y:
            row = mirror - row
        if transpose:
            column, row = row, column
        inside = np.uint32(column) < limit and np.uint32(row) < limit
        indices[i] = row * width + column if inside else outside

    for i in range(points):
        counts[indices[i]] += np.uint32(1)


@njit(cache=True)
def orient_stamp(stamp, transpose, flip_rows, flip_columns):
    """Return the 3x3 stamp (9 booleans, row-major) transposed, then flipped, like its image."""
    out = np.empty(9, dtype=np.bool_)
    for k in range(9):
        row = k // 3
        column = k % 3
        if transpose:
            row, column = column, row
        if flip_rows:
            row = 2 - row
        if flip_columns:
            column = 2 - column
        out[row * 3 + column] = stamp[k]
    return out


@njit(cache=True)
def stamp_density(counts, stamp, size, density):
    """Write the per-pixel density of size x size pixels into density and return its maximum.

    counts is the (size + 2) x (size + 2) count canvas of bin_points. With a stamp (9 booleans,
    row-major 3x3), each point adds 1 to every pixel of the stamp centred on it. That equals
    convolving the count canvas with the stamp, which this function does in one pass.
    """
    weight = np.zeros(9, dtype=np.uint32)
    for k in range(9):
        if stamp[k]:
            weight[k] = 1
    w0, w1, w2 = weight[0], weight[1], weight[2]
    w3, w4, w5 = weight[3], weight[4], weight[5]
    w6, w7, w8 = weight[6], weight[7], weight[8]
    peak = np.uint32(0)
    for i in range(size):
        # Stamp row 0 lands one row above the point, so it reads the count row below.
        # Shifted row views keep the loop index plain: numba's negative-index handling of
        # expressions such as j + 2 stops LLVM from vectorizing.
        below, middle, above = counts[i + 2], counts[i + 1], counts[i]
        b0, b1, b2 = below[2:], below[1:], below[:size]
        m0, m1, m2 = middle[2:], middle[1:], middle[:size]
        a0, a1, a2 = above[2:], above[1:], above[:size]
        row = density[i]
        for j in range(size):
            value = (
                w0 * b0[j] + w1 * b1[j] + w2 * b2[j]
                + w3 * m0[j] + w4 * m1[j] + w5 * m2[j]
                + w6 * a0[j] + w7 * a1[j] + w8 * a2[j]
            )
            row[j] = value
            peak = max(peak, value)
    return peak


# ---------------------------------------------------------------- colour


@njit(cache=True, inline="always")
def hsv_to_rgb(h, s, v):
    """Return uint8-ranged (r, g, b) floats for hue h in [0, 1), saturation s and value v."""
    h6 = (h - math.floor(h)) * 6.0
    sector = int(h6) % 6
    f = h6 - math.floor(h6)
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    if sector == 0:
        r, g, b = v, t, p
    elif sector == 1:
        r, g, b = q, v, p
    elif sector == 2:
        r, g, b = p, v, t
    elif sector == 3:
        r, g, b = p, q, v
    elif sector == 4:
        r, g, b = t, p, v
    else:
        r, g, b = v, p, q
    return r * 255.0 + 0.5, g * 255.0 + 0.5, b * 255.0 + 0.5


@njit(cache=True)
def fill_hue_table(table, saturation, value):
    """Fill a (HUE_LEVELS, 3) uint8 table with RGB for hues k / HUE_LEVELS at fixed s and v."""
    for k in range(HUE_LEVELS):
        r, g, b = hsv_to_rgb(k / HUE_LEVELS, saturation, value)
        table[k, 0] = np.uint8(r)
        table[k, 1] = np.uint8(g)
        table[k, 2] = np.uint8(b)


@njit(cache=True)
def paint_layer(density, peak, size, colours, hue_shift, mode, grey, canvas, top, left):
    """Draw the non-zero pixels of a size x size density onto canvas at (top, left), clipped.

    mode 0 colours by hue = (density / peak + hue_shift) mod 1 through the colours table; mode 1
    uses hue_shift alone (binary colour); mode 2 writes grey levels 255 * density / peak; mode 3
    writes the constant `grey`.
    """
    height, width = canvas.shape[0], canvas.shape[1]
    i_begin = max(0, -top)
    i_end = min(size, height - top)
    j_begin = max(0, -left)
    j_end = min(size, width - left)
    level_scale = F32(HUE_LEVELS) / F32(max(peak, np.uint32(1)))
    shift = np.int64(hue_shift * HUE_LEVELS)
    grey_scale = F32(255.0) / F32(max(peak, np.uint32(1)))
    top_level = np.int32(HUE_LEVELS - 1)
    shift32 = np.int32(shift)
    levels_row = np.empty(max(j_end - j_begin, 0), dtype=np.int32)
    for i in range(i_begin, i_end):
        source = density[i, j_begin:j_end]
        target = canvas[top + i, left + j_begin : left + j_end]
        if mode == 0:
            # Hue levels of the row first (a loop that vectorizes), then the table lookups.
            for j in range(len(source)):
                levels_row[j] = (min(np.int32(F32(source[j]) * level_scale), top_level) + shift32) & top_level
            for j in range(len(source)):
                if source[j] != 0:
                    out = target[j]
                    colour = colours[levels_row[j]]
                    out[0] = colour[0]
                    out[1] = colour[1]
                    out[2] = colour[2]
            continue
        for j in range(len(source)):
            d = source[j]
            if d == 0:
                continue
            out = target[j]
            if mode == 1:
                out[0] = colours[shift, 0]
                out[1] = colours[shift, 1]
                out[2] = colours[shift, 2]
            elif mode == 2:
                level = np.uint8(max(1, min(255, np.int64(F32(d) * grey_scale))))
                out[0] = level
                out[1] = level
                out[2] = level
            else:
                out[0] = grey
                out[1] = grey
                out[2] = grey


# ---------------------------------------------------------------- background


@njit(cache=True)
def fill_noise(noise, count, key, counter, amplitude):
    """Fill noise[:count] with U(-amplitude, amplitude) values hashed from (key, counter + j).

    A counter-based generator (splitmix64 of the counter) has no serial dependency between
    draws, so this loop vectorizes.
    """
    scale = 2.0 * amplitude / 9007199254740992.0
    for j in range(count):
        bits = splitmix64(key + (counter + U64(j)) * GOLDEN_GAMMA)
        noise[j] = float(bits >> U64(11)) * scale - amplitude


@njit(cache=True)
def diamond_square(levels, decay, state, grid, noise):
    """Fill grid[:s, :s], s = 2**levels + 1, with diamond-square plasma; returns (min, max).

    Random corners in [0, 1) and noise U(-m, m) with m = 0.5 exp(decay (1 - k)) at level k, with
    wrap-around neighbours in the square step, as in Anderson & Farrell's background generator.
    noise is float64 scratch of at least s entries.
    """
    s = (1 << levels) + 1
    grid[0, 0] = uniform(state, 0.0, 1.0)
    grid[0, s - 1] = uniform(state, 0.0, 1.0)
    grid[s - 1, 0] = uniform(state, 0.0, 1.0)
    grid[s - 1, s - 1] = uniform(state, 0.0, 1.0)
    key = next_u64(state)
    counter = U64(0)

    # Rows are handled through strided views so that the inner loops index plainly.
    for k in range(1, levels + 1):
        m = 0.5 * math.exp(decay * (1 - k))
        half = s >> k
        step = 2 * half
        cells = 1 << k
        centres = cells // 2

        # Diamond step: centre of every square = mean of its 4 corners plus noise.
        for r in range(half, s, step):
            fill_noise(noise, centres, key, counter, m)
            counter += U64(centres)
            top = grid[r - half]
            bottom = grid[r + half]
            top_left, top_right = top[0 : s - 1 : step], top[step:s:step]
            bottom_left, bottom_right = bottom[0 : s - 1 : step], bottom[step:s:step]
            out = grid[r, half:s:step]
            for j in range(centres):
                out[j] = 0.25 * (top_left[j] + top_right[j] + bottom_left[j] + bottom_right[j]) + noise[j]

        # Square step: edge midpoints = mean of their 4 neighbours, wrapping at the border.
        for i in range(cells + 1):
            r = i * half
            up = grid[r - half if r > 0 else s - half - 1]
            down = grid[r + half if r < s - 1 else half]
            row = grid[r]
            if i % 2 == 0:
                # Columns half, half + step, ...: all neighbours lie inside the row.
                fill_noise(noise, centres, key, counter, m)
                counter += U64(centres)
                left, right = row[0 : s - 1 : step], row[step:s:step]
                up_c, down_c, out = up[half:s:step], down[half:s:step], row[half:s:step]
                for j in range(centres):
                    out[j] = 0.25 * (up_c[j] + down_c[j] + left[j] + right[j]) + noise[j]
            else:
                # Columns 0, step, ..., s - 1: the first and last wrap around.
                count = centres + 1
                fill_noise(noise, count, key, counter, m)
                counter += U64(count)
                row[0] = 0.25 * (up[0] + down[0] + row[s - half - 1] + row[half]) + noise[0]
                last = s - 1
                row[last] = 0.25 * (up[last] + down[last] + row[last - half] + row[half]) + noise[centres]
                left, right = row[half : s - 1 - step : step], row[half + step : s : step]
                up_c, down_c, out = up[step : s - 1 : step], down[step : s - 1 : step], row[step : s - 1 : step]
                inner_noise = noise[1:count]
                for j in range(centres - 1):
                    out[j] = 0.25 * (up_c[j] + down_c[j] + left[j] + right[j]) + inner_noise[j]

    low = grid[0, 0]
    high = grid[0, 0]
    for i in range(s):
        row = grid[i]
        for j in range(s):
            low = min(low, row[j])
            high = max(high, row[j])
    return low, high


@njit(cache=True)
def paint_background(canvas, state, grid, noise, levels_table):
    """Fill the canvas with a colourized diamond-square plasma drawn from the stream.

    Hue = x * U(0.25, 1) + U(0, 1), saturation = min(x * U(0.1, 0.3) + U(0.4, 0.6), 1) and
    value = min(x * U(0.3, 0.6) + U(0.4, 0.6), 1) for plasma value x (Anderson & Farrell). The
    colour is a function of x alone, so it is tabulated at BACKGROUND_LEVELS levels of x.
    """
    height, width = canvas.shape[0], canvas.shape[1]
    side = max(height, width)
    levels = 1
    while (1 << levels) < side:
        levels += 1
    decay = uniform(state, 0.4, 0.8)
    low, high = diamond_square(levels, decay, state, grid, noise)

    hue_scale = uniform(state, 0.25, 1.0)
    hue_shift = uniform(state, 0.0, 1.0)
    saturation_scale = uniform(state, 0.1, 0.3)
    saturation_shift = uniform(state, 0.4, 0.6)
    value_scale = uniform(state, 0.3, 0.6)
    value_shift = uniform(state, 0.4, 0.6)
    span = max(high - low, 1e-9)
    for k in range(BACKGROUND_LEVELS):
        x = low + (k + 0.5) / BACKGROUND_LEVELS * span
        saturation = min(max(x * saturation_scale + saturation_shift, 0.0), 1.0)
        value = min(max(x * value_scale + value_shift, 0.0), 1.0)
        r, g, b = hsv_to_rgb(x * hue_scale + hue_shift, saturation, value)
        levels_table[k, 0] = np.uint8(r)
        levels_table[k, 1] = np.uint8(g)
        levels_table[k, 2] = np.uint8(b)

    # Levels of a row first (a loop that vectorizes), then the table lookups.
    level_scale = BACKGROUND_LEVELS / span
    levels_row = np.empty(width, dtype=np.int32)
    top_level = np.int32(BACKGROUND_LEVELS - 1)
    for i in range(height):
        values = grid[i]
        for j in range(width):
            levels_row[j] = min(np.int32((values[j] - low) * level_scale), top_level)
        out = canvas[i]
        for j in range(width):
            pixel = out[j]
            colour = levels_table[levels_row[j]]
            pixel[0] = colour[0]
            pixel[1] = colour[1]
            pixel[2] = colour[2]


# ---------------------------------------------------------------- blur


@njit(cache=True)
def gaussian_blur_3x3(canvas, sigma, scratch):
    """Blur a uint8 (H, W, 3) canvas in place with a separable 3x3 Gaussian of the given sigma.

    Borders reflect without repeating the edge pixel (OpenCV's BORDER_REFLECT_101 default). The
    weights are fixed point with 8 fractional bits per pass, so a result is within one grey level
    of the exact filter. scratch is uint16 with at least H * W * 3 entries.
    """
    height, width = canvas.shape[0], canvas.shape[1]
    side_weight = math.exp(-1.0 / (2.0 * sigma * sigma))
    side = np.int32(round(256.0 * side_weight / (1.0 + 2.0 * side_weight)))
    centre = np.int32(256) - 2 * side
    row_length = 3 * width
    image = canvas.reshape((height, row_length))
    blurred = scratch[: height * row_length].reshape((height, row_length))

    # Horizontal pass on interleaved RGB rows (neighbours of entry k are k - 3 and k + 3), values
    # scaled by 256.
    for i in range(height):
        row = image[i]
        out = blurred[i]
        for k in range(3):
            out[k] = np.uint16(centre * np.int32(row[k]) + 2 * side * np.int32(row[k + 3]))
        # Shifted views keep the index plain (numba's negative-index handling blocks vectorizing).
        left, middle, right, inner = row[: row_length - 6], row[3 : row_length - 3], row[6:], out[3 : row_length - 3]
        for k in range(row_length - 6):
            inner[k] = np.uint16(
                centre * np.int32(middle[k]) + side * (np.int32(left[k]) + np.int32(right[k]))
            )
        for k in range(row_length - 3, row_length):
            out[k] = np.uint16(centre * np.int32(row[k]) + 2 * side * np.int32(row[k - 3]))

    # Vertical pass back into the canvas, rounded: the sum is scaled by 256 * 256.
    for i in range(height):
        up = blurred[i - 1 if i > 0 else 1]
        middle = blurred[i]
        down = blurred[i + 1 if i < height - 1 else height - 2]
        row = image[i]
        for k in range(row_length):
            value = centre * np.int32(middle[k]) + side * (np.int32(up[k]) + np.int32(down[k]))
            row[k] = np.uint8((value + 32768) >> 16)


# ---------------------------------------------------------------- images

# Layout of the float64 options vector shared by the image kernels (see render.RenderConfig).
OPT_POINTS = 0
OPT_COLOR = 1
OPT_GRADED = 2
OPT_STAMP = 3
OPT_BACKGROUND = 4
OPT_JITTER = 5
OPT_JITTER_LOW = 6
OPT_JITTER_HIGH = 7
OPT_SCALE_LOW = 8
OPT_SCALE_HIGH = 9
OPT_SHIFT = 10
OPT_FLIPS = 11
OPT_BLUR_P = 12
OPT_BLUR_SIGMA_LOW = 13
OPT_BLUR_SIGMA_HIGH = 14
OPT_SATURATION_LOW = 15
OPT_SATURATION_HIGH = 16
OPT_VALUE_LOW = 17
OPT_VALUE_HIGH = 18
OPTION_COUNT = 19


@njit(cache=True)
def render_layer(
    system, instance, view, options, points, size, window_augment,
    buffer, indices, table, counts, density, colours, canvas, top, left,
):
    """Render one IFS as a size x size layer and draw it onto canvas at (top, left).

    Two streams: `instance` draws what makes the fractal instance (chaos-game map choices, stamp,
    colour) and `view` draws its augmentation (jitter, window scale and shift when window_augment,
    flips), so one instance can be shown in many views. They may be the same array. Returns False
    (and draws nothing) when the chaos game diverged.

    counts and density are flat uint32 workspaces of at least (size + 2)^2 + 1 and size^2 entries,
    indices an int32 workspace of at least recorded_points(points) entries.
    """
    jittered = jitter_system(
        system, view, options[OPT_JITTER] != 0.0, options[OPT_JITTER_LOW], options[OPT_JITTER_HIGH]
    )
    x_min, x_max, y_min, y_max, ok = chaos_game(jittered, points, instance, table, buffer)

    # Window = bounding box of the points, then scaled and shifted per axis (fraction of extent).
    x_extent = x_max - x_min if x_max > x_min else 1.0
    y_extent = y_max - y_min if y_max > y_min else 1.0
    x_centre = 0.5 * (x_min + x_max)
    y_centre = 0.5 * (y_min + y_max)
    if window_augment:
        shift = options[OPT_SHIFT]
        x_centre += x_extent * uniform(view, -shift, shift)
        y_centre += y_extent * uniform(view, -shift, shift)
        x_extent *= uniform(view, options[OPT_SCALE_LOW], options[OPT_SCALE_HIGH])
        y_extent *= uniform(view, options[OPT_SCALE_LOW], options[OPT_SCALE_HIGH])
    x_low = x_centre - 0.5 * x_extent
    y_low = y_centre - 0.5 * y_extent

    # Without a stamp each point marks its own pixel: the centre cell alone.
    stamp = np.zeros(9, dtype=np.bool_)
    stamp[4] = True
    if options[OPT_STAMP] != 0.0:
        bits = next_u64(instance)
        for k in range(9):
            stamp[k] = ((bits >> U64(k + 20)) & U64(1)) != U64(0)
        # An empty stamp would erase the fractal: keep its centre instead.
        if not np.any(stamp):
            stamp[4] = True

    transpose = False
    flip_rows = False
    flip_columns = False
    if options[OPT_FLIPS] != 0.0:
        bits = next_u64(view)
        transpose = ((bits >> U64(40)) & U64(1)) != U64(0)
        flip_rows = ((bits >> U64(41)) & U64(1)) != U64(0)
        flip_columns = ((bits >> U64(42)) & U64(1)) != U64(0)

    color = options[OPT_COLOR] != 0.0
    graded = options[OPT_GRADED] != 0.0
    hue_shift = 0.0
    if color:
        hue_shift = uniform(instance, 0.0, 1.0)
        saturation = uniform(instance, options[OPT_SATURATION_LOW], options[OPT_SATURATION_HIGH])
        value = uniform(instance, options[OPT_VALUE_LOW], options[OPT_VALUE_HIGH])
        fill_hue_table(colours, saturation, value)

    if not ok:
        return False

    # The stamp belongs to the unflipped image, so it turns with it.
    stamp = orient_stamp(stamp, transpose, flip_rows, flip_columns)

    # Flips act on the image after the transpose (Anderson & Farrell's order), so with a
    # transpose the row flip mirrors the x axis.
    x_scale = (size - 1) / x_extent
    y_scale = (size - 1) / y_extent
    flip_x = flip_rows if transpose else flip_columns
    flip_y = flip_columns if transpose else flip_rows

    # Contiguous views of the flat workspaces at this layer's size.
    width = size + 2
    layer_counts = counts[: width * width + 1]
    layer_density = density[: size * size].reshape((size, size))
    layer_counts[:] = 0
    bin_points(
        buffer, recorded_points(points), x_low, x_scale, y_low, y_scale, flip_x, flip_y, transpose,
        size, indices, layer_counts,
    )
    peak = stamp_density(layer_counts[: width * width].reshape((width, width)), stamp, size, layer_density)

    if color:
        mode = 0 if graded else 1
    else:
        mode = 2 if graded else 3
    paint_layer(layer_density, peak, size, colours, hue_shift, mode, np.uint8(127), canvas, top, left)
    return True


@njit(cache=True)
def finish_image(state, options, canvas, scratch):
    """Blur the canvas with probability OPT_BLUR_P and sigma U(OPT_BLUR_SIGMA_LOW, _HIGH)."""
    draw = uniform(state, 0.0, 1.0)
    sigma = uniform(state, options[OPT_BLUR_SIGMA_LOW], options[OPT_BLUR_SIGMA_HIGH])
    if draw < options[OPT_BLUR_P]:
        gaussian_blur_3x3(canvas, sigma, scratch)


@njit(cache=True)
def render_single(
    system, instance_seed, view_seed, options, window_augment,
    buffer, indices, table, counts, density, colours, grid, noise, levels_table, scratch, canvas,
):
    """Render the image of one IFS into canvas (uint8, S x S x 3).

    instance_seed seeds the fractal instance (map choices, stamp, colour) and view_seed its
    augmentation, background and blur (see render_layer). Draws the background (or black), the
    fractal over the full canvas, then the optional blur. Returns False when the chaos game
    diverged (the image then shows only the background).
    """
    instance = new_stream(instance_seed)
    view = new_stream(view_seed)
    size = canvas.shape[0]
    if options[OPT_BACKGROUND] != 0.0:
        paint_background(canvas, view, grid, noise, levels_table)
    else:
        canvas[:, :, :] = 0
    ok = render_layer(
        system, instance, view, options, int(options[OPT_POINTS]), size, window_augment,
        buffer, indices, table, counts, density, colours, canvas, 0, 0,
    )
    finish_image(view, options, canvas, scratch)
    return ok


@njit(cache=True)
def render_single_batch(
    maps, offsets, system_indices, instance_seeds, view_seeds, options, window_augment,
    buffer, indices, table, counts, density, colours, grid, noise, levels_table, scratch, images, status,
):
    """Render images[b] from system system_indices[b] and its seeds, reusing one workspace."""
    for b in range(len(view_seeds)):
        k = system_indices[b]
        system = maps[offsets[k] : offsets[k + 1]]
        status[b] = render_single(
            system, instance_seeds[b], view_seeds[b], options, window_augment,
            buffer, indices, table, counts, density, colours, grid, noise, levels_table, scratch, images[b],
        )


@njit(cache=True)
def render_composite(
    maps, offsets, pool_offsets, pool_systems, first_class, seed, options,
    count_low, count_high, size_low, size_high, same_class,
    buffer, indices, table, counts, density, colours, grid, noise, levels_table, scratch, canvas, classes_out,
):
    """Render an image with several fractals pasted over the background; returns the object count.

    The object count is uniform in [count_low, count_high]. Object 0 has class first_class; the
    other objects have first_class too when same_class, else a class uniform over all classes.
    Each object is a system drawn uniformly from its class's pool
    (pool_systems[pool_offsets[c]:pool_offsets[c + 1]]), rendered at a side of
    U(size_low, size_high) times the canvas side, at a position where at least a quarter of it
    lies on the canvas. classes_out[k] receives object k's class.
    """
    state = new_stream(seed)
    size = canvas.shape[0]
    if options[OPT_BACKGROUND] != 0.0:
        paint_background(canvas, state, grid, noise, levels_table)
    else:
        canvas[:, :, :] = 0

    n_classes = len(pool_offsets) - 1
    count = count_low + randint(state, count_high - count_low + 1)
    points = int(options[OPT_POINTS])
    for k in range(count):
        if k == 0 or same_class:
            label = first_class
        else:
            label = randint(state, n_classes)
        pool_size = pool_offsets[label + 1] - pool_offsets[label]
        system_index = pool_systems[pool_offsets[label] + randint(state, pool_size)]
        side = max(8, int(uniform(state, size_low, size_high) * size))
        top = randint(state, size) - side // 2
        left = randint(state, size) - side // 2
        # Keep the points per pixel of a full-size image, with a floor for small objects.
        object_points = max(min(points, 20_000), int(points * (side / size) ** 2))
        system = maps[offsets[system_index] : offsets[system_index + 1]]
        render_layer(
            system, state, state, options, object_points, side, False,
            buffer, indices, table, counts, density, colours, canvas, top, left,
        )
        classes_out[k] = label
    finish_image(state, options, canvas, scratch)
    return count


@njit(cache=True)
def to_float_chw(canvas, out):
    """Write a uint8 (H, W, 3) image into a float32 (3, H, W) array scaled to [0, 1]."""
    height, width = canvas.shape[0], canvas.shape[1]
    scale = F32(1.0 / 255.0)
    for c in range(3):
        for i in range(height):
            for j in range(width):
                out[c, i, j] = F32(canvas[i, j, c]) * scale


@njit(cache=True)
def plain_density(system, size, points, seed, density):
    """Write point counts of a plain chaos-game rendering into density (uint32, size x size).

    No augmentation or stamp: the window is the bounding box of the points. Returns False (with
    density zeroed) when the chaos game diverges.
    """
    state = new_stream(seed)
    steps = (points + CHAINS - 1) // CHAINS
    buffer = np.empty((2, CHAINS * steps), dtype=np.float32)
    table = np.empty(CHOICE_TABLE_SIZE, dtype=np.uint8)
    x_min, x_max, y_min, y_max, ok = chaos_game(system, points, state, table, buffer)
    density[:, :] = 0
    if not ok:
        return False
    width = size + 2
    counts = np.zeros(width * width + 1, dtype=np.uint32)
    indices = np.empty(recorded_points(points), dtype=np.int32)
    x_extent = x_max - x_min if x_max > x_min else 1.0
    y_extent = y_max - y_min if y_max > y_min else 1.0
    x_scale = (size - 1) / x_extent
    y_scale = (size - 1) / y_extent
    bin_points(buffer, recorded_points(points), x_min, x_scale, y_min, y_scale, False, False, False, size, indices, counts)
    for i in range(size):
        for j in range(size):
            density[i, j] = counts[(i + 1) * width + j + 1]
    return True
