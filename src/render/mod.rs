//! Drawing an [`Attribution`](crate::graph::Attribution): the pathway as an SVG document
//! ([`pathway_svg`]) and that SVG as a PNG image ([`svg_to_png`]); the pruned DAG and the
//! heatmap in one interactive, self-contained HTML page ([`graph_html`]).
//!
//! All are pure: the same attribution gives byte-identical output on every machine, since
//! the PNG is drawn with a font compiled into the binary rather than the system's fonts.

mod color;
pub mod dag;
pub mod heatmap;
pub mod html;
pub mod png;
pub mod svg;
mod text;

pub use dag::{dag_svg, layer_heads, ChosenHead};
pub use heatmap::{heatmap_layout, heatmap_svg, max_per_position, HeatmapLayout};
pub use html::graph_html;
pub use png::{parse_svg, svg_to_png, usvg_options, PNG_SCALE};
pub use svg::{layout, pathway_svg, Layout, NodeBox, FONT_FAMILY, TARGET_ID};

/// Why an SVG could not be turned into a PNG.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The SVG text is not a document usvg accepts.
    #[error("the SVG did not parse: {0}")]
    Parse(#[from] resvg::usvg::Error),
    /// The canvas is empty or too large to allocate.
    #[error("cannot allocate a {width}×{height} pixel canvas")]
    Canvas {
        /// Requested width in pixels.
        width: u32,
        /// Requested height in pixels.
        height: u32,
    },
    /// The PNG encoder failed.
    #[error("PNG encoding failed: {0}")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
}
