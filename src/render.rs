//! Pictures of environments for `fleet eval --record`: the classic-control
//! tasks drawn from their physical state as Gymnasium's
//! `render_mode="rgb_array"` draws them, at its sizes (CartPole 600×400:
//! track, cart, pole, axle; Pendulum 500×500: a rod from a pivot, without
//! Gymnasium's torque arrow; Acrobot 500×500: two links, their joints and
//! the line the tip must rise above; MountainCar 600×400, the continuous
//! one too: the hill `y = sin(3x)`, the car on it and the flag at the
//! goal), and image observations shown as they are, enlarged with
//! nearest-neighbour so a 10×5 board or an 84×84 Atari frame is big enough
//! to watch. Every picture is palette-indexed,
//! the form a GIF stores, so frames go to the encoder without quantising.
//! Not here: choosing what to draw (`eval`), or writing the GIF.

use std::f64::consts::FRAC_PI_2;

use fleet_actor::env::{acrobot, mountain_car, pendulum};
use fleet_agent::FrameShape;

/// An image as indices into a palette of RGB triples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Indexed {
    pub width: usize,
    pub height: usize,
    /// `width × height` indices, row by row from the top.
    pub pixels: Vec<u8>,
    /// RGB triples, at most 256 of them.
    pub palette: Vec<u8>,
}

impl Indexed {
    /// The RGB colour of the pixel at `(x, y)`.
    pub fn rgb(&self, x: usize, y: usize) -> [u8; 3] {
        let i = usize::from(self.pixels[y * self.width + x]) * 3;
        [self.palette[i], self.palette[i + 1], self.palette[i + 2]]
    }

    /// The image with every pixel repeated `scale × scale` times.
    pub fn upscaled(&self, scale: usize) -> Self {
        let scale = scale.max(1);
        let width = self.width * scale;
        let mut pixels = Vec::with_capacity(width * self.height * scale);
        for row in self.pixels.chunks_exact(self.width.max(1)) {
            let start = pixels.len();
            for &pixel in row {
                pixels.extend(std::iter::repeat_n(pixel, scale));
            }
            for _ in 1..scale {
                pixels.extend_from_within(start..start + width);
            }
        }
        Self {
            width,
            height: self.height * scale,
            pixels,
            palette: self.palette.clone(),
        }
    }
}

/// CartPole's picture size, Gymnasium's.
pub const CARTPOLE_WIDTH: usize = 600;
pub const CARTPOLE_HEIGHT: usize = 400;

/// CartPole's colours as Gymnasium draws them, by palette index.
const WHITE: u8 = 0;
const BLACK: u8 = 1;
const POLE: u8 = 2;
const AXLE: u8 = 3;
const CARTPOLE_PALETTE: [u8; 12] = [255, 255, 255, 0, 0, 0, 202, 152, 101, 129, 132, 203];
/// The pole's colour, for finding it in a picture.
pub const POLE_RGB: [u8; 3] = [202, 152, 101];

/// CartPole with the cart at `x` (metres from the centre) and the pole at
/// `theta` (radians from upright, positive leaning right), drawn as
/// Gymnasium's `CartPoleEnv.render` draws it: the track 4.8 m wide fills
/// the picture's width, the cart 50×30 px with its top 100 px above the
/// bottom, the pole 10 px wide and 125 px long from the axle a quarter of
/// the cart's height above that top. A cart beyond the edge is clipped.
pub fn cartpole(x: f64, theta: f64) -> Indexed {
    let (width, height) = (CARTPOLE_WIDTH, CARTPOLE_HEIGHT);
    let world_width = 2.0 * fleet_actor::env::cartpole::X_THRESHOLD;
    let scale = width as f64 / world_width;
    let pole_width = 10.0;
    let pole_length = scale * 2.0 * fleet_actor::env::cartpole::HALF_POLE_LENGTH;
    let (cart_width, cart_height) = (50.0, 30.0);
    let axle_offset = cart_height / 4.0;
    let cart_x = x * scale + width as f64 / 2.0;
    let cart_y = 100.0;

    // Gymnasium draws with y up and flips the surface at the end; here y
    // counts up from the bottom too and `Canvas` flips as it plots.
    let mut canvas = Canvas::new(width, height);
    let (l, r, t, b) = (-cart_width / 2.0, cart_width / 2.0, cart_height / 2.0, -cart_height / 2.0);
    let cart = [(l, b), (l, t), (r, t), (r, b)].map(|(px, py)| (px + cart_x, py + cart_y));
    canvas.fill_convex(&cart, BLACK);

    let (l, r, t, b) = (
        -pole_width / 2.0,
        pole_width / 2.0,
        pole_length - pole_width / 2.0,
        -pole_width / 2.0,
    );
    // Rotated by -theta (clockwise for a positive angle), as Gymnasium's
    // `Vector2.rotate_rad(-x[2])`.
    let (sin, cos) = (-theta).sin_cos();
    let pole = [(l, b), (l, t), (r, t), (r, b)].map(|(px, py)| (px * cos - py * sin + cart_x, px * sin + py * cos + cart_y + axle_offset));
    canvas.fill_convex(&pole, POLE);
    canvas.fill_circle((cart_x, cart_y + axle_offset), pole_width / 2.0, AXLE);
    canvas.horizontal_line(cart_y, BLACK);
    Indexed {
        width,
        height,
        pixels: canvas.pixels,
        palette: CARTPOLE_PALETTE.to_vec(),
    }
}

/// The palette of the other classic-control pictures, Gymnasium's colours
/// for them: white, black, then by index [`ROD`], [`LINK`], [`JOINT`],
/// [`WHEEL`].
const CLASSIC_PALETTE: [u8; 18] = [255, 255, 255, 0, 0, 0, 204, 77, 77, 0, 204, 204, 204, 204, 0, 128, 128, 128];
/// Pendulum's rod.
const ROD: u8 = 2;
/// Acrobot's links.
const LINK: u8 = 3;
/// Acrobot's joints and MountainCar's flag.
const JOINT: u8 = 4;
/// MountainCar's wheels.
const WHEEL: u8 = 5;
pub const ROD_RGB: [u8; 3] = [204, 77, 77];
pub const LINK_RGB: [u8; 3] = [0, 204, 204];
pub const JOINT_RGB: [u8; 3] = [204, 204, 0];

/// Pendulum's and Acrobot's picture size (square), Gymnasium's.
pub const PENDULUM_SIZE: usize = 500;
pub const ACROBOT_SIZE: usize = 500;
/// MountainCar's picture size, Gymnasium's, for both versions.
pub const MOUNTAIN_CAR_WIDTH: usize = 600;
pub const MOUNTAIN_CAR_HEIGHT: usize = 400;

fn classic(canvas: Canvas) -> Indexed {
    Indexed {
        width: canvas.width,
        height: canvas.height,
        pixels: canvas.pixels,
        palette: CLASSIC_PALETTE.to_vec(),
    }
}

/// Pendulum-v1 at `theta` (radians from upright, positive counterclockwise),
/// as Gymnasium's `PendulumEnv.render` draws it: the pivot at the centre,
/// 2.2 m from it to each edge, the rod 1 m long and 0.2 m wide with round
/// ends, and a black axle on the pivot.
pub fn pendulum(theta: f64) -> Indexed {
    let size = PENDULUM_SIZE;
    let scale = size as f64 / (2.0 * 2.2);
    let centre = size as f64 / 2.0;
    let (rod_length, rod_width) = (pendulum::LENGTH * scale, 0.2 * scale);
    // Lying along +x, turned by theta + π/2: upright at theta = 0.
    let (sin, cos) = (theta + FRAC_PI_2).sin_cos();
    let place = |(x, y): (f64, f64)| (x * cos - y * sin + centre, x * sin + y * cos + centre);
    let mut canvas = Canvas::new(size, size);
    let (l, r, t, b) = (0.0, rod_length, rod_width / 2.0, -rod_width / 2.0);
    canvas.fill_convex(&[(l, b), (l, t), (r, t), (r, b)].map(place), ROD);
    canvas.fill_circle((centre, centre), rod_width / 2.0, ROD);
    canvas.fill_circle(place((rod_length, 0.0)), rod_width / 2.0, ROD);
    canvas.fill_circle((centre, centre), 0.05 * scale, BLACK);
    classic(canvas)
}

/// Acrobot-v1 with the first link at `theta1` (radians from hanging
/// straight down, positive counterclockwise) and the second at `theta2`
/// from the first, as Gymnasium's `AcrobotEnv.render` draws it: the pivot
/// at the centre, 2.2 links from it to each edge, each link 0.2 wide with
/// a joint at its start, and a black line one link above the pivot, which
/// the tip must rise above.
pub fn acrobot(theta1: f64, theta2: f64) -> Indexed {
    let size = ACROBOT_SIZE;
    // Both links are as long as the first.
    let length = acrobot::LINK_LENGTH_1;
    let scale = size as f64 / (2.0 * (2.0 * length + 0.2));
    let centre = size as f64 / 2.0;
    let mut canvas = Canvas::new(size, size);
    canvas.horizontal_line(centre + length * scale, BLACK);
    let mut start = (centre, centre);
    for angle in [theta1, theta1 + theta2] {
        // Lying along +x, turned by angle − π/2: hanging down at 0.
        let (sin, cos) = (angle - FRAC_PI_2).sin_cos();
        let origin = start;
        let place = |(x, y): (f64, f64)| (x * cos - y * sin + origin.0, x * sin + y * cos + origin.1);
        let (l, r, t, b) = (0.0, length * scale, 0.1 * scale, -0.1 * scale);
        canvas.fill_convex(&[(l, b), (l, t), (r, t), (r, b)].map(place), LINK);
        canvas.fill_circle(start, 0.1 * scale, JOINT);
        start = place((length * scale, 0.0));
    }
    classic(canvas)
}

/// MountainCar-v0 (or MountainCarContinuous-v0, whose flag is at another
/// `goal`) with the car at `position`, as Gymnasium's `MountainCarEnv.render`
/// draws it: the positions from the left wall to the right edge fill the
/// width, the hill `0.45·sin(3x) + 0.55` to scale, the car 40×20 px on it
/// (tilted by `cos(3x)` radians, Gymnasium's approximation of the slope)
/// with two wheels, and a flag on a 50 px pole at the goal.
pub fn mountain_car(position: f64, goal: f64) -> Indexed {
    let (width, height) = (MOUNTAIN_CAR_WIDTH, MOUNTAIN_CAR_HEIGHT);
    let (min, max) = (mountain_car::MIN_POSITION, mountain_car::MAX_POSITION);
    let scale = width as f64 / (max - min);
    let hill = |x: f64| (3.0 * x).sin() * 0.45 + 0.55;
    let mut canvas = Canvas::new(width, height);
    canvas.graph(|px| hill(min + px / scale) * scale, 2.0, BLACK);

    let (car_width, car_height, clearance) = (40.0, 20.0, 10.0);
    let (sin, cos) = (3.0 * position).cos().sin_cos();
    let (car_x, car_y) = ((position - min) * scale, clearance + hill(position) * scale);
    let place = |(x, y): (f64, f64)| (x * cos - y * sin + car_x, x * sin + y * cos + car_y);
    let (l, r, t, b) = (-car_width / 2.0, car_width / 2.0, car_height, 0.0);
    canvas.fill_convex(&[(l, b), (l, t), (r, t), (r, b)].map(place), BLACK);
    for x in [car_width / 4.0, -car_width / 4.0] {
        canvas.fill_circle(place((x, 0.0)), car_height / 2.5, WHEEL);
    }

    let flag_x = (goal - min) * scale;
    let (flag_bottom, flag_top) = (hill(goal) * scale, hill(goal) * scale + 50.0);
    canvas.fill_convex(
        &[
            (flag_x - 1.0, flag_bottom),
            (flag_x - 1.0, flag_top),
            (flag_x + 1.0, flag_top),
            (flag_x + 1.0, flag_bottom),
        ],
        BLACK,
    );
    canvas.fill_convex(
        &[(flag_x, flag_top), (flag_x, flag_top - 10.0), (flag_x + 25.0, flag_top - 5.0)],
        JOINT,
    );
    classic(canvas)
}

/// How a frame's channels are read as a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channels {
    /// One channel of grey intensities.
    Grey,
    /// Three channels: red, green, blue.
    Rgb,
}

impl Channels {
    pub const fn count(self) -> usize {
        match self {
            Self::Grey => 1,
            Self::Rgb => 3,
        }
    }
}

/// One frame of `height × width` pixels, channels first as observations
/// hold them (`channels.count()` planes), as an indexed picture: grey as
/// itself with a palette of 256 greys, colour quantised to 256 colours
/// (exactly, when it has no more).
pub fn frame(pixels: &[u8], frame: FrameShape, channels: Channels) -> Indexed {
    let (width, height) = (frame.width, frame.height);
    let plane = width * height;
    match channels {
        Channels::Grey => Indexed {
            width,
            height,
            pixels: pixels[..plane].to_vec(),
            palette: (0..=255u8).flat_map(|v| [v, v, v]).collect(),
        },
        Channels::Rgb => {
            let rgb: Vec<u8> = (0..plane)
                .flat_map(|i| [pixels[i], pixels[plane + i], pixels[2 * plane + i]])
                .collect();
            // The GIF encoder's own quantiser; a frame is at most 65,535
            // pixels a side, which the caller has checked.
            let quantised = gif::Frame::from_rgb_speed(width as u16, height as u16, &rgb, 10);
            Indexed {
                width,
                height,
                pixels: quantised.buffer.into_owned(),
                palette: quantised.palette.unwrap_or_default(),
            }
        }
    }
}

/// The nearest-neighbour factor that brings a frame's longer side to about
/// [`FRAME_TARGET`] pixels (never below 1).
pub fn upscale_factor(frame: FrameShape) -> usize {
    (FRAME_TARGET / frame.height.max(frame.width).max(1)).max(1)
}

/// The longer side that small frames are enlarged towards.
pub const FRAME_TARGET: usize = 320;

/// A palette-indexed drawing surface with y counting up from the bottom
/// row, as Gymnasium's drawing before its flip.
struct Canvas {
    width: usize,
    height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![WHITE; width * height],
        }
    }

    /// Colours the pixel whose centre is at (`x`, `y`) from the bottom-left.
    fn plot(&mut self, x: usize, y: usize, colour: u8) {
        if x < self.width && y < self.height {
            let row = self.height - 1 - y;
            self.pixels[row * self.width + x] = colour;
        }
    }

    /// The pixel columns or rows whose centres lie in `lo..=hi`, clipped.
    fn span(lo: f64, hi: f64, size: usize) -> std::ops::Range<usize> {
        let first = (lo - 0.5).ceil().max(0.0);
        let last = (hi - 0.5).floor().min(size as f64 - 1.0);
        if last < first {
            return 0..0;
        }
        first as usize..last as usize + 1
    }

    /// Fills the convex polygon `corners` (in order, either direction):
    /// every pixel whose centre is inside or on an edge.
    fn fill_convex(&mut self, corners: &[(f64, f64)], colour: u8) {
        let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in corners {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
        for y in Self::span(y0, y1, self.height) {
            for x in Self::span(x0, x1, self.width) {
                let (px, py) = (x as f64 + 0.5, y as f64 + 0.5);
                if inside_convex(corners, px, py) {
                    self.plot(x, y, colour);
                }
            }
        }
    }

    fn fill_circle(&mut self, (cx, cy): (f64, f64), radius: f64, colour: u8) {
        for y in Self::span(cy - radius, cy + radius, self.height) {
            for x in Self::span(cx - radius, cx + radius, self.width) {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= radius * radius {
                    self.plot(x, y, colour);
                }
            }
        }
    }

    /// The graph of `f` (height from the bottom, in pixels, of a column
    /// position from the left edge) across the whole width, `thickness`
    /// pixels high: each column covers the heights between its two edges'
    /// values, so steep stretches leave no gaps.
    fn graph(&mut self, f: impl Fn(f64) -> f64, thickness: f64, colour: u8) {
        for x in 0..self.width {
            let (a, b) = (f(x as f64), f(x as f64 + 1.0));
            for y in Self::span(a.min(b) - thickness / 2.0, a.max(b) + thickness / 2.0, self.height) {
                self.plot(x, y, colour);
            }
        }
    }

    /// A line one pixel high across the whole width at height `y`.
    fn horizontal_line(&mut self, y: f64, colour: u8) {
        let y = y.floor().max(0.0) as usize;
        for x in 0..self.width {
            self.plot(x, y, colour);
        }
    }
}

/// Whether (`x`, `y`) lies inside or on the convex polygon `corners`: on
/// the same side of every edge.
fn inside_convex(corners: &[(f64, f64)], x: f64, y: f64) -> bool {
    let (mut positive, mut negative) = (false, false);
    for (i, &(ax, ay)) in corners.iter().enumerate() {
        let (bx, by) = corners[(i + 1) % corners.len()];
        let cross = (bx - ax) * (y - ay) - (by - ay) * (x - ax);
        if cross.is_nan() {
            return false;
        }
        positive |= cross > 0.0;
        negative |= cross < 0.0;
    }
    !(positive && negative)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean column and row (from the top) of the pixels of `colour`.
    fn centre_of(picture: &Indexed, colour: [u8; 3]) -> Option<(f64, f64)> {
        let (mut sx, mut sy, mut n) = (0.0, 0.0, 0.0);
        for y in 0..picture.height {
            for x in 0..picture.width {
                if picture.rgb(x, y) == colour {
                    (sx, sy, n) = (sx + x as f64, sy + y as f64, n + 1.0);
                }
            }
        }
        (n > 0.0).then(|| (sx / n, sy / n))
    }

    const BLACK_RGB: [u8; 3] = [0, 0, 0];

    #[test]
    fn an_upright_pole_stands_above_a_centred_cart() {
        let picture = cartpole(0.0, 0.0);
        assert_eq!((picture.width, picture.height), (600, 400));
        assert_eq!(picture.pixels.len(), 600 * 400);
        let (pole_x, pole_y) = centre_of(&picture, POLE_RGB).expect("a pole");
        assert!((pole_x - 299.5).abs() < 1.0, "{pole_x}");
        // The pole reaches from the axle (107.5 px up) to 232.5 px up: its
        // middle is near 170 px above the bottom, 230 from the top.
        assert!((pole_y - 230.0).abs() < 3.0, "{pole_y}");
        let pole_pixels = picture.pixels.iter().filter(|&&p| p == POLE).count();
        // 10 × 125 px less what the axle covers.
        assert!((1100..=1300).contains(&pole_pixels), "{pole_pixels}");
        // The track line runs across at 100 px from the bottom.
        assert!((0..600).all(|x| picture.rgb(x, 299) == BLACK_RGB));
        // The cart: black from 85 to 115 px up around the centre, and
        // white well away from it.
        assert_eq!(picture.rgb(300 - 20, 400 - 90), BLACK_RGB);
        assert_eq!(picture.rgb(300 + 20, 400 - 110), BLACK_RGB);
        assert_eq!(picture.rgb(100, 100), [255, 255, 255]);
        assert_eq!(picture.rgb(300, 400 - 108), [129, 132, 203], "the axle");
    }

    #[test]
    fn the_pole_leans_with_the_angle_and_the_cart_moves_with_x() {
        let upright = centre_of(&cartpole(0.0, 0.0), POLE_RGB).unwrap();
        let right = centre_of(&cartpole(0.0, 0.2), POLE_RGB).unwrap();
        let left = centre_of(&cartpole(0.0, -0.2), POLE_RGB).unwrap();
        // Its middle, 62.5 px from the axle, moves by 62.5·sin(0.2) ≈ 12 px
        // to the side it leans to, and drops a little.
        assert!((right.0 - upright.0 - 62.5 * 0.2f64.sin()).abs() < 1.5, "{right:?} vs {upright:?}");
        assert!((upright.0 - left.0 - 62.5 * 0.2f64.sin()).abs() < 1.5, "{left:?} vs {upright:?}");
        assert!(
            right.1 > upright.1 && (right.1 - left.1).abs() < 0.5,
            "{left:?} {upright:?} {right:?}"
        );

        // 125 px per metre: the cart, 50 px wide, centred at 300 + 125·x.
        let moved = cartpole(1.0, 0.0);
        let row = 400 - 90;
        assert_eq!(moved.rgb(425 - 24, row), BLACK_RGB);
        assert_eq!(moved.rgb(425 + 24, row), BLACK_RGB);
        assert_eq!(moved.rgb(425 - 27, row), [255, 255, 255]);
        assert_eq!(moved.rgb(425 + 27, row), [255, 255, 255]);
        let pole_moved = centre_of(&cartpole(1.0, 0.0), POLE_RGB).unwrap().0 - upright.0;
        assert!((pole_moved - 125.0).abs() < 0.5, "{pole_moved}");
    }

    #[test]
    fn a_cart_at_the_edge_is_clipped_not_a_panic() {
        for x in [-2.6, -2.4, 2.4, 2.6, 100.0, f64::NAN] {
            let picture = cartpole(x, 1.5);
            assert_eq!(picture.pixels.len(), 600 * 400);
        }
    }

    fn count(picture: &Indexed, colour: [u8; 3]) -> usize {
        (0..picture.height)
            .flat_map(|y| (0..picture.width).map(move |x| (x, y)))
            .filter(|&(x, y)| picture.rgb(x, y) == colour)
            .count()
    }

    const WHEEL_RGB: [u8; 3] = [128, 128, 128];
    const WHITE_RGB: [u8; 3] = [255, 255, 255];

    #[test]
    fn a_pendulum_is_a_rod_from_the_centre_that_turns_with_its_angle() {
        let upright = pendulum(0.0);
        assert_eq!((upright.width, upright.height, upright.pixels.len()), (500, 500, 500 * 500));
        // 500 px for 4.4 m: the rod is 113.6 px long and 22.7 px wide, with
        // round ends; its middle is about 57 px above the pivot.
        let (x, y) = centre_of(&upright, ROD_RGB).expect("a rod");
        assert!((x - 249.5).abs() < 1.0 && (y - (249.5 - 56.8)).abs() < 4.0, "{x} {y}");
        assert_eq!(upright.rgb(250, 250), BLACK_RGB, "the axle");
        // Its round end reaches 113.6 + 11.4 px above the centre.
        assert_eq!(upright.rgb(250, 250 - 122), ROD_RGB);
        assert_eq!(upright.rgb(250, 250 - 128), WHITE_RGB);
        let rod = count(&upright, ROD_RGB);
        assert!((2400..=3200).contains(&rod), "{rod}");

        // A quarter turn counterclockwise lays it to the left; a half turn
        // hangs it down.
        let (x, y) = centre_of(&pendulum(FRAC_PI_2), ROD_RGB).unwrap();
        assert!((x - (249.5 - 56.8)).abs() < 4.0 && (y - 249.5).abs() < 1.0, "{x} {y}");
        let (x, y) = centre_of(&pendulum(std::f64::consts::PI), ROD_RGB).unwrap();
        assert!((x - 249.5).abs() < 1.0 && (y - (249.5 + 56.8)).abs() < 4.0, "{x} {y}");
        assert_ne!(pendulum(0.05).pixels, upright.pixels);
    }

    #[test]
    fn acrobot_links_hang_from_the_centre_and_follow_both_angles() {
        let hanging = acrobot(0.0, 0.0);
        assert_eq!((hanging.width, hanging.height), (500, 500));
        // 500 px for 4.4 links: each link 113.6 px. Hanging straight down,
        // the links' middle is one link below the pivot.
        let (x, y) = centre_of(&hanging, LINK_RGB).expect("links");
        // (The joints drawn over the links' tops shift it down a little.)
        assert!((x - 249.5).abs() < 1.0 && (y - (249.5 + 113.6)).abs() < 6.0, "{x} {y}");
        // The joints: at the pivot and one link below it.
        assert_eq!(hanging.rgb(250, 250), JOINT_RGB);
        assert_eq!(hanging.rgb(250, 250 + 114), JOINT_RGB);
        // The line one link above the pivot, across the picture.
        let row = 500 - 1 - (250.0 + 500.0 / 4.4f64).floor() as usize;
        assert!((0..500).all(|x| hanging.rgb(x, row) == BLACK_RGB), "row {row}");

        // Standing straight up, the links are above the pivot (across the line).
        let (x, y) = centre_of(&acrobot(std::f64::consts::PI, 0.0), LINK_RGB).unwrap();
        assert!((x - 249.5).abs() < 1.0 && (y - (249.5 - 113.6)).abs() < 6.0, "{x} {y}");
        // The second link turned a quarter from the first points right.
        let bent = acrobot(0.0, FRAC_PI_2);
        assert_eq!(bent.rgb(250 + 60, 250 + 114), LINK_RGB);
        assert_eq!(hanging.rgb(250 + 60, 250 + 114), WHITE_RGB);
        assert_ne!(acrobot(0.05, 0.0).pixels, hanging.pixels);
    }

    #[test]
    fn a_mountain_car_sits_on_the_hill_and_moves_with_its_position() {
        let scale = 600.0 / 1.8;
        let hill = |x: f64| (3.0 * x).sin() * 0.45 + 0.55;
        let picture = mountain_car(-0.5, 0.5);
        assert_eq!((picture.width, picture.height), (600, 400));
        // The hill line runs through each column at its height.
        for column in [10, 150, 300, 450, 590] {
            let height = hill(-1.2 + (column as f64 + 0.5) / scale) * scale;
            let row = 400 - 1 - height.floor() as usize;
            assert_eq!(picture.rgb(column, row), BLACK_RGB, "column {column}");
        }
        // The wheels, either side of the car's centre, which is
        // 10 px above the hill at the car's position.
        for position in [-0.5, 0.0, 0.4] {
            let (x, y) = centre_of(&mountain_car(position, 0.5), WHEEL_RGB).expect("wheels");
            let (car_x, car_y) = ((position + 1.2) * scale, 400.0 - (10.0 + hill(position) * scale));
            assert!(
                (x + 0.5 - car_x).abs() < 1.0 && (y + 0.5 - car_y).abs() < 3.0,
                "{position}: {x} {y}"
            );
        }
        // The flag at the goal: 0.5, or the continuous car's 0.45.
        let flag = |goal| centre_of(&mountain_car(-0.5, goal), JOINT_RGB).expect("a flag");
        let (x, y) = flag(0.5);
        assert!((x - (1.7 * scale + 25.0 / 3.0)).abs() < 2.0, "{x}");
        assert!((y - (400.0 - hill(0.5) * scale - 45.0)).abs() < 2.0, "{y}");
        assert!((flag(0.5).0 - flag(0.45).0 - 0.05 * scale).abs() < 1.0);
        assert_ne!(mountain_car(-0.49, 0.5).pixels, picture.pixels);
    }

    #[test]
    fn states_out_of_range_are_clipped_not_a_panic() {
        for value in [f64::NAN, f64::INFINITY, -1e9, 100.0] {
            assert_eq!(pendulum(value).pixels.len(), 500 * 500);
            assert_eq!(acrobot(value, 1.0).pixels.len(), 500 * 500);
            assert_eq!(acrobot(0.5, value).pixels.len(), 500 * 500);
            assert_eq!(mountain_car(value, 0.5).pixels.len(), 600 * 400);
        }
    }

    #[test]
    fn frames_are_enlarged_pixel_for_pixel() {
        let shape = FrameShape {
            channels: 1,
            height: 2,
            width: 3,
        };
        let picture = frame(&[0, 10, 20, 30, 40, 50], shape, Channels::Grey);
        let big = picture.upscaled(2);
        assert_eq!((big.width, big.height), (6, 4));
        assert_eq!(
            big.pixels,
            [
                0, 0, 10, 10, 20, 20, 0, 0, 10, 10, 20, 20, 30, 30, 40, 40, 50, 50, 30, 30, 40, 40, 50, 50
            ]
        );
        assert_eq!(big.rgb(5, 3), [50, 50, 50]);
        assert_eq!(upscale_factor(fleet_actor::env::catch::FRAME), 8);
        assert_eq!(
            upscale_factor(FrameShape {
                channels: 4,
                height: 84,
                width: 84
            }),
            3
        );
        assert_eq!(
            upscale_factor(FrameShape {
                channels: 3,
                height: 400,
                width: 600
            }),
            1
        );
    }

    #[test]
    fn colour_frames_keep_their_colours() {
        let shape = FrameShape {
            channels: 3,
            height: 1,
            width: 2,
        };
        // Channels first: red plane, green plane, blue plane.
        let picture = frame(&[255, 0, 0, 255, 10, 20], shape, Channels::Rgb);
        assert_eq!(picture.rgb(0, 0), [255, 0, 10]);
        assert_eq!(picture.rgb(1, 0), [0, 255, 20]);
    }
}
